"""One deployment at a time per tenant service, under a crowd: more runs wait for a service's deploy lock than the
Temporal server lets updates be in flight on one workflow (10 by default, ``history.maxInFlightUpdates``). Waiting
inside the lock is capped, so the holder's ``release`` and ``record`` always get in; the rest wait outside, their
place in the queue kept, and ask again. Every run deploys once, in arrival order, none overlapping, each recorded."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from temporalio.service import RPCError, RPCStatusCode

from katkit.config import parse_config
from katkit.models import LockGrant, LockRequest, LockState, RunStatus
from katkit.names import LOCK_ACQUIRE, LOCK_RELEASE, LOCK_STATE, deploy_lock_id
from katkit.sample import commit_files
from katkit.temporal import ledger_start
from starter.api import Katkit
from tests.conftest import in_process_worker, wait_for
from tests.test_replay import HISTORIES, assert_replays

PIPELINE = json.dumps([{"EnvName": "default", "WorkFlow": [
    {"Name": "BUILD", "PhaseType": 4, "Order": 1, "Parallelism": 1},
    {"Name": "DEPLOY", "PhaseType": 1, "Order": 2, "Parallelism": 1}]}])
SERVICE = json.dumps({"Name": "app", "DockerImage": "app:<hubtag>"})
RUNS = 24


async def test_more_waiters_than_the_server_admits_updates_all_deploy_once_each_recorded(kk: Katkit, repo: Path) -> None:
    async with in_process_worker(kk.client, kk.settings, threads=4 * RUNS):  # activity slots for every waiting deploy
        await _crowd(kk, repo)


async def _crowd(kk: Katkit, repo: Path) -> None:
    ks = Katkit(kk.client, kk.settings, parse_config(
        f"tenants: [{{name: crowd, env: DEV}}]\nlinks: [{{repo: r, url: {repo}, tenants: [crowd]}}]\n"))
    shas = [commit_files(repo, {"ci.sh": "true\n", "katkitconfig.js": PIPELINE,
                                "servicedescription/servicedescription.js": SERVICE, "n": str(n)}) for n in range(RUNS)]
    # the test holds the lock (as a deploy would) while the runs pile up behind it
    queue = ks.settings.task_queue
    held = LockRequest(tenant="crowd", service="app", run_id="test-holder")  # no such run: a watchdog of 10 minutes
    grant = await ks.client.execute_update_with_start_workflow(
        LOCK_ACQUIRE, held, start_workflow_operation=ledger_start(queue, "crowd", "app", 600.0), result_type=LockGrant)
    assert grant.granted
    lock = ks.client.get_workflow_handle(deploy_lock_id(queue, "crowd", "app"))
    handles = await asyncio.gather(*(ks.start_run("crowd", "r", sha=sha, by="bob") for sha in shas))

    async def waiting() -> bool:
        try:
            state = await lock.query(LOCK_STATE, result_type=LockState)
        except RPCError:  # a query may time out while the worker is this busy: look again
            return False
        return len(state.waiters) == RUNS
    await wait_for(waiting, timeout=120)  # all of them queued, more than the server admits updates in flight

    async def released() -> bool:  # as a deploy's release does: asked again while the server turns it away
        try:
            await lock.execute_update(LOCK_RELEASE, held)
            return True
        except RPCError as exc:
            assert exc.status in (RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE), exc
            return False
    await wait_for(released, timeout=30, interval=0.2)  # the holder's release gets in: only 5 wait inside

    async def result(run_id: str) -> RunStatus:
        return await ks.client.get_workflow_handle(run_id, result_type=RunStatus).result()

    # a hang guard, not a timing target: a lock freed only by its watchdog takes minutes here
    results = await asyncio.wait_for(asyncio.gather(*(result(h.run_id) for h in handles)), timeout=240)
    assert [r.status for r in results] == ["succeeded"] * RUNS, [(r.status, r.error) for r in results]
    spans = sorted((r.deployed.started_at, r.deployed.deployed_at) for r in results if r.deployed is not None)
    assert len(spans) == RUNS
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans  # never two deploys at once
    records = await ks.deployments("crowd", "app")
    assert sorted(r.run_id for r in records) == sorted(h.run_id for h in handles)  # each deploy recorded, once
    history = await lock.fetch_history()  # waits inside and outside the lock, recorded for replay
    await assert_replays([history])
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "lockq1_crowd.json").write_text(history.to_json())
