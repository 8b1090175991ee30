"""The orphan reaper: builders whose run has closed are removed, on worker start and then periodically.

A builder is normally removed by its own activity. This catches what nothing else can: a run that was
terminated (no cleanup runs then), or a worker that died for good while its builder ran.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from temporalio.client import Client
from temporalio.service import RPCError

from katkit.backends import builders_on_this_host
from katkit.builders import Builder
from katkit.errors import KatkitError
from katkit.temporal import is_open

log = structlog.get_logger("katkit.reaper")
REAP_INTERVAL_S = 300.0


async def _shard_generations(client: Client, run_id: str, execution: str) -> dict[tuple[str, int], int]:
    """(phase, shard) -> how often that shard of an open run started afresh on another host (empty if unknown)."""
    from datetime import timedelta

    from katkit.models import RunStatus
    from katkit.names import QUERY_STATUS

    try:
        st = await client.get_workflow_handle(run_id, run_id=execution or None).query(
            QUERY_STATUS, result_type=RunStatus, rpc_timeout=timedelta(seconds=10))
    except Exception as exc:  # noqa: BLE001 - a run that cannot answer keeps its builders
        log.info("could not ask an open run about its shards", run_id=run_id, error=str(exc))
        return {}
    return {(p.name, s.index): s.generation for p in st.phases for s in p.shards}


async def reap_once(client: Client, builders: list[Builder], task_queue: str) -> list[str]:
    """Remove every builder of this installation (namespace and task queue) whose run is closed or gone.

    Builders of another installation sharing the engine are left alone: their runs are not ours to ask about.
    """
    removed = []
    generations: dict[tuple[str, str], dict[tuple[str, int], int]] = {}
    for builder in builders:
        for name, labels in (await asyncio.to_thread(builder.list)).items():
            run_id = labels.get("katkit.run")
            ours = labels.get("katkit.task_queue") == task_queue and labels.get("katkit.namespace") == client.namespace
            if not run_id or not ours:
                continue
            execution = labels.get("katkit.execution", "")
            if await is_open(client, run_id, execution):
                key = (run_id, execution)
                if key not in generations:
                    generations[key] = await _shard_generations(client, run_id, execution)
                shard = (labels.get("katkit.phase", ""), int(labels.get("katkit.shard", "-1")))
                if generations[key].get(shard, 0) <= int(labels.get("katkit.generation", "0")):
                    continue  # still this shard's builder (or the run cannot say): leave it
                log.info("removing a builder whose shard started afresh on another host", builder=name, run_id=run_id)
            await asyncio.to_thread(builder.remove, name)
            log.info("removed orphaned builder", builder=name, run_id=run_id)
            removed.append(name)
    return removed


async def reap_forever(client: Client, home: Path, task_queue: str, interval: float = REAP_INTERVAL_S) -> None:
    builders = await asyncio.to_thread(builders_on_this_host, home)
    while True:
        try:
            await reap_once(client, builders, task_queue)
        except (RPCError, KatkitError) as exc:
            log.warning("orphan reaper pass failed; trying again later", error=str(exc))
        await asyncio.sleep(interval)
