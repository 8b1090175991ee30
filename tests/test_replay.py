"""Workflow code changes are guarded by replaying recorded CommitRun histories.

``tests/histories/*.json`` were recorded from real runs; ``KATKIT_RECORD_HISTORIES=1 ./dev.sh test
tests/test_replay.py`` records them again (do that only when a change is meant to be incompatible, and
version the workflow with ``workflow.patched`` instead wherever running workflows must survive it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from katkit.config import parse_config
from katkit.errors import RunFailed, UnknownName
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import commit_files
from katkit.temporal import DATA_CONVERTER
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from workflows import CommitRun, DeployLock, Promotion, TenantFreezes

HISTORIES = Path(__file__).parent / "histories"
GATED = """
tenants:
  - {{name: d-gated, env: DEV}}
  - name: p-gated
    env: PROD
    webhooks: ["http://127.0.0.1:9/nobody-listens"]
    approval: {{required: true, approvers: [alice, carol], min_approvals: 2, wait_timer: 1s}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-gated, p-gated]}}
"""


def replayer() -> Replayer:
    return Replayer(workflows=[CommitRun, DeployLock, Promotion, TenantFreezes], data_converter=DATA_CONVERTER)


async def test_recorded_histories_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert len(files) >= 10, "recorded histories are missing"
    assert any(f.name.startswith("gates1_") for f in files) and any(f.name.startswith("github1_") for f in files)
    assert any(f.name.startswith("ledger1_") for f in files)  # a DeployLock keeping a service's ledger
    assert any(f.name.startswith("autorollback1_") for f in files)  # a smoke test failed: the previous image back
    assert any(f.name.startswith("freeze1_") for f in files) and any(f.name.startswith("retry1_") for f in files)
    assert {f.name for f in files} >= {"hosts1_dev_succeeded.json", "hosts1_host_gone.json"}  # shards on their host
    assert {f.name for f in files} >= {"arch1_deployed.json", "arch1_rollback.json", "arch1_rollback_unlinked.json"}
    assert any(not f.name.startswith(("gates1_", "github1_", "ledger1_", "hosts1_", "arch1_")) for f in files)
    assert any(f.name.startswith("proof1_") for f in files)  # signed decisions (issue 17)
    histories = [WorkflowHistory.from_json(_workflow_id(f), f.read_text()) for f in files]
    await assert_replays(histories)


def _workflow_id(f: Path) -> str:
    """The id a history ran under where it matters (a signed decision is bound to its run id), else the file's name."""
    if not f.name.startswith("proof1_"):
        return f.stem
    return json.loads(f.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]["workflowId"]


async def assert_replays(histories: list[WorkflowHistory]) -> None:
    replayed = 0
    async with replayer().workflow_replay_iterator(_aiter(histories)) as results:
        async for result in results:
            assert result.replay_failure is None, f"{result.history.workflow_id}: {result.replay_failure}"
            replayed += 1
    assert replayed == len(histories)


async def _aiter(items):
    for item in items:
        yield item


@pytest.mark.usefixtures("worker")
async def test_fresh_histories_replay(kk: Katkit, repo: Path, sha: str) -> None:
    """Every path through CommitRun, run now and replayed: succeeded, approved, rejected, failed, cancelled."""
    runs: dict[str, str] = {}
    dev = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await kk.wait(dev.run_id)
    runs["dev_succeeded"] = dev.run_id

    prod = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, prod.run_id, "awaiting_approval"))
    await kk.client.get_workflow_handle(prod.run_id).signal("approve", {"by": "mallory"})
    await kk.approve(prod.run_id, "alice", "ok")
    await kk.wait(prod.run_id)
    runs["prod_approved"] = prod.run_id

    rejected_sha = commit_files(repo, {"CHANGES.md": "2\n"})
    rejected = await kk.start_run("p-taskrunner", "taskrunner", sha=rejected_sha, by="bob")
    await wait_for(lambda: status_is(kk, rejected.run_id, "awaiting_approval"))
    await kk.reject(rejected.run_id, "alice", "no")
    with pytest.raises(RunFailed):
        await kk.wait(rejected.run_id)
    runs["prod_rejected"] = rejected.run_id

    failing_sha = commit_files(repo, {"ci.sh": "exit 4\n"})
    failed = await kk.start_run("d-taskrunner", "taskrunner", sha=failing_sha, by="bob")
    with pytest.raises(RunFailed):
        await kk.wait(failed.run_id)
    runs["dev_failed"] = failed.run_id

    slow_sha = commit_files(repo, {"ci.sh": "echo go; sleep 60\n"})
    cancelled = await kk.start_run("d-taskrunner", "taskrunner", sha=slow_sha, by="bob")
    await wait_for(lambda: _phase_running(kk, cancelled.run_id))
    await kk.cancel(cancelled.run_id)
    with pytest.raises(RunFailed):
        await kk.wait(cancelled.run_id)
    runs["dev_cancelled"] = cancelled.run_id

    gated = parse_config(GATED.format(url=repo))
    kg = Katkit(kk.client, kk.settings, gated)
    quorum = await kg.start_run("p-gated", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kg, quorum.run_id, "awaiting_approval"))
    await kg.approve(quorum.run_id, "alice")
    await kg.client.get_workflow_handle(quorum.run_id).signal("approve", {"by": "alice"})
    await kg.approve(quorum.run_id, "carol")
    await kg.wait(quorum.run_id)
    runs["quorum_webhook_wait_timer"] = quorum.run_id
    promotion = await kg.start_promotion("taskrunner", rejected_sha, ["d-gated", "p-gated"], by="bob")
    p_run = f"run-p-gated-taskrunner-{rejected_sha[:12]}"
    await wait_for(lambda: _open_and(kg, p_run, "awaiting_approval"))
    await kg.reject(p_run, "alice", "no")
    with pytest.raises(RunFailed):
        await kg.wait_promotion(promotion.run_id)
    runs["promotion_rejected"] = promotion.run_id
    runs["promotion_child_rejected"] = p_run
    async for wf in kk.client.list_workflows(f'WorkflowType = "DeployLock" AND TaskQueue = "{kk.settings.task_queue}"'):
        runs[f"deploy_lock_{len([k for k in runs if k.startswith('deploy_lock')])}"] = wf.id
    histories = [await kk.client.get_workflow_handle(run_id).fetch_history() for run_id in runs.values()]
    await assert_replays(histories)
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        HISTORIES.mkdir(exist_ok=True)
        for name, history in zip(runs, histories):
            (HISTORIES / f"gates1_{name}.json").write_text(history.to_json())



@pytest.mark.usefixtures("worker")
async def test_host_affinity_histories_replay(kk: Katkit, sha: str) -> None:
    """A run whose shards go to the worker host that checked it out (katkit-hosts-1), run now and replayed."""
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    st = await kk.wait(handle.run_id)
    assert {s.host for p in st.phases for s in p.shards} == {kk.settings.host_queue}
    history = await kk.client.get_workflow_handle(handle.run_id).fetch_history()
    await assert_replays([history])
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "hosts1_dev_succeeded.json").write_text(history.to_json())


async def _open_and(kk: Katkit, run_id: str, status: str) -> bool:
    try:
        return await status_is(kk, run_id, status)
    except UnknownName:
        return False


async def _phase_running(kk: Katkit, run_id: str) -> bool:
    st = await kk.status(run_id)
    return bool(st.phases) and st.phases[0].state == "running"


@pytest.mark.usefixtures("worker")
async def test_rollback_histories_replay(kk: Katkit, repo: Path, sha: str, home: Path) -> None:
    """Deploys with the explicit DeployInput (kind, image) and rollbacks without a checkout: to an image katkit never
    deployed (no commit known) of a repository no longer linked, and to an image whose commit the ledger knows."""
    LocalPlatform(home / "services").put("d-taskrunner", RunningService(name="taskrunner", image="taskrunner:by-hand"))
    first = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await kk.wait(first.run_id)
    unlinked = Katkit(kk.client, kk.settings, kk.config.model_copy(update={"links": []}))
    by_hand = await unlinked.start_rollback("d-taskrunner", "taskrunner", by="erin")
    st = await unlinked.wait(by_hand.run_id)
    assert (st.deployed.image, st.sha, st.repo) == ("taskrunner:by-hand", "", "taskrunner")
    sha2 = commit_files(repo, {"CHANGES.md": "v2\n"})
    await kk.wait((await kk.start_run("d-taskrunner", "taskrunner", sha=sha2, by="bob")).run_id)
    back = await kk.start_rollback("d-taskrunner", "taskrunner", to_sha=sha[:8], by="erin")
    st = await kk.wait(back.run_id)
    assert (st.deployed.image, st.sha, st.repo) == (f"taskrunner:{sha}", sha, "taskrunner")
    records = await kk.deployments("d-taskrunner", "taskrunner")
    assert [(r.kind, r.image, r.sha) for r in records] == [
        ("deploy", f"taskrunner:{sha}", sha), ("rollback", "taskrunner:by-hand", ""),
        ("deploy", f"taskrunner:{sha2}", sha2), ("rollback", f"taskrunner:{sha}", sha)]
    runs = {"deployed": first.run_id, "rollback_unlinked": by_hand.run_id, "rollback": back.run_id}
    histories = [await kk.client.get_workflow_handle(run_id).fetch_history() for run_id in runs.values()]
    await assert_replays(histories)
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        for name, history in zip(runs, histories):
            (HISTORIES / f"arch1_{name}.json").write_text(history.to_json())


@pytest.mark.usefixtures("worker")
async def test_autorollback_histories_replay(kk: Katkit, repo: Path, sha: str, home: Path) -> None:
    """A smoke test after the deploy fails and katkit puts the previous image back (katkit-autorollback-1)."""
    from tests.test_gates import SMOKE_TENANTS, smoke_files

    ka = Katkit(kk.client, kk.settings, parse_config(SMOKE_TENANTS.format(url=repo, hook="http://127.0.0.1:9/nobody")))
    LocalPlatform(home / "services").put("d-safe", RunningService(name="taskrunner", image="taskrunner:ancient"))
    good = commit_files(repo, smoke_files(ok=True))
    await ka.wait((await ka.start_run("d-safe", "taskrunner", sha=good, by="bob")).run_id)
    bad = await ka.start_run("d-safe", "taskrunner", sha=commit_files(repo, smoke_files(ok=False)), by="bob")
    with pytest.raises(RunFailed, match="rolled back to"):
        await ka.wait(bad.run_id)
    history = await kk.client.get_workflow_handle(bad.run_id).fetch_history()
    await assert_replays([history])
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "autorollback1_rolled_back.json").write_text(history.to_json())
