"""What every benchmark shares: a Temporal dev server of its own with a worker, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from katkit.config import Settings, parse_config
from katkit.models import RunStatus
from katkit.sample import commit_files
from katkit.temporal import free_port, start_dev_server
from starter.api import Katkit
from worker import run_worker


def noop_pipeline(phases: int) -> dict[str, str]:
    """A repository whose ci.sh does nothing, run in ``phases`` execution phases of one shard each."""
    config = [{"EnvName": "default", "WorkFlow": [
        {"Name": f"P{i:02d}", "PhaseType": 4, "Order": i, "Parallelism": 1} for i in range(1, phases + 1)]}]
    return {"ci.sh": "true\n", "katkitconfig.js": json.dumps(config)}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


@contextlib.asynccontextmanager
async def katkit_on_dev_server(work: Path, config_yaml: str, **settings: Any) -> AsyncIterator[Katkit]:
    """A dev server on a free port (state under ``work``), a worker, and a starter for ``config_yaml``."""
    port = free_port()
    server = start_dev_server(work, port=port, ui_port=free_port())
    try:
        s = Settings(home=work / "home", address=f"127.0.0.1:{port}", task_queue=f"bench-{port}", **settings)
        kk = await Katkit.connect(s, parse_config(config_yaml))
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(s, kk.client, stop))
        try:
            yield kk
        finally:
            stop.set()
            await worker
    finally:
        server.terminate()
        server.wait()


async def run_commit(kk: Katkit, tenant: str, repo: Path, files: dict[str, str]) -> RunStatus:
    """Commit ``files``, run that sha in ``tenant`` and wait on the result (no status polling: no observer effect)."""
    sha = commit_files(repo, files)
    handle = await kk.start_run(tenant, "r", sha=sha, by="bench")
    return await kk.client.get_workflow_handle(handle.run_id, result_type=RunStatus).result()
