"""CommitRun end to end against a real Temporal dev server, the local builder and the local platform."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from katkit.config import KatkitConfig
from katkit.errors import BadInput, RunFailed
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import status_is, wait_for

pytestmark = pytest.mark.usefixtures("worker")

ENV_DUMP_CI = """#!/usr/bin/env bash
set -eu
env | sort > "$OUT/$KATKIT_PHASE.$KATKIT_SHARD_INDEX.env"
echo "phase $KATKIT_PHASE shard $KATKIT_SHARD_INDEX"
"""


def katkitconfig(*phases: dict, env: str = "default") -> str:
    return json.dumps([{"EnvName": env, "LocalFleet": "false", "WorkFlow": list(phases)}])


def phase(name: str, order: int, ptype: int = 4, params: str = "", parallelism: int = 1) -> dict:
    return {"Name": name, "PhaseType": ptype, "BuildParams": params, "Order": order, "Parallelism": parallelism,
            "ContinerImage": None}


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


async def test_dev_run_builds_tests_and_deploys(kk: Katkit, sha: str, home: Path) -> None:
    handle = await kk.start_run("d-taskrunner", "taskrunner", branch="main", by="bob")
    assert handle.sha == sha and handle.run_id == f"run-d-taskrunner-taskrunner-{sha[:12]}"
    st = await kk.wait(handle.run_id)
    assert st.status == "succeeded" and [p.state for p in st.phases] == ["succeeded"] * 3
    assert [len(p.shards) for p in st.phases] == [1, 2, 0]
    assert all(s.exit_code == 0 for p in st.phases for s in p.shards)
    assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
    # builders are gone, logs are not
    assert not any((home / "builders").iterdir())
    logs = {label: data.decode() async for label, data in kk.follow_logs(handle.run_id)}
    assert "ok 1 add_task" in logs["UNIT_TEST#2"] and "ok 0 add_task" in logs["UNIT_TEST#1"]
    assert "building taskrunner:" in logs["BUILD"]
    history = await kk.deployments("d-taskrunner", "taskrunner")
    assert [h.image for h in history] == [f"taskrunner:{sha}"] and history[0].started_by == "bob"


async def test_every_shard_sees_the_contract_env(kk: Katkit, repo: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "envs"
    out.mkdir()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_worker_secret")
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("TZ", "Europe/Paris")
    sha = commit_files(repo, {
        "ci.sh": ENV_DUMP_CI,
        "katkitconfig.js": katkitconfig(
            phase("BUILD", 1, params=f"OUT={out}, MODE=fast, EMPTY=, SPACED = a b "),
            phase("TEST", 2, params=f"OUT={out}", parallelism=3),
        ),
    })
    st = await kk.wait((await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")).run_id)
    assert st.status == "succeeded"
    assert sorted(p.name for p in out.iterdir()) == ["BUILD.0.env", "TEST.0.env", "TEST.1.env", "TEST.2.env"]
    build = read_env(out / "BUILD.0.env")
    assert build["KATKIT_SHA"] == sha and len(build["KATKIT_SHA"]) == 40
    assert (build["KATKIT_PHASE"], build["KATKIT_ENV"], build["KATKIT_TENANT"]) == ("BUILD", "DEV", "d-taskrunner")
    assert (build["KATKIT_REPO"], build["KATKIT_BRANCH"]) == ("taskrunner", "main")
    assert build["KATKIT_RUN_ID"] == st.run_id
    assert (build["KATKIT_SHARD_INDEX"], build["KATKIT_SHARD_COUNT"]) == ("0", "1")
    assert (build["MODE"], build["EMPTY"], build["SPACED"]) == ("fast", "", "a b")
    for i in range(3):
        test = read_env(out / f"TEST.{i}.env")
        assert (test["KATKIT_SHARD_INDEX"], test["KATKIT_SHARD_COUNT"], test["KATKIT_PHASE"]) == (str(i), "3", "TEST")
        assert "MODE" not in test
    for env in (build, read_env(out / "TEST.0.env")):
        assert "AWS_SECRET_ACCESS_KEY" not in env and "GITHUB_TOKEN" not in env
    # exactly the documented environment (bash itself adds PWD, SHLVL and _)
    documented = {"KATKIT_SHA", "KATKIT_PHASE", "KATKIT_ENV", "KATKIT_TENANT", "KATKIT_REPO", "KATKIT_BRANCH",
                  "KATKIT_RUN_ID", "KATKIT_SHARD_INDEX", "KATKIT_SHARD_COUNT", "PATH", "LANG", "HOME"}
    assert set(build) - {"PWD", "SHLVL", "_"} == documented | {"OUT", "MODE", "EMPTY", "SPACED"}
    assert Path(build["HOME"]).is_relative_to(kk.settings.home / "builders")


async def test_env_name_selects_the_entry(kk: Katkit, repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "envs"
    out.mkdir()
    config = json.dumps([
        {"EnvName": "default", "WorkFlow": [phase("DEFAULT_PHASE", 1, params=f"OUT={out}")]},
        {"EnvName": "PROD", "WorkFlow": [phase("PROD_PHASE", 1, params=f"OUT={out}")]},
    ])
    sha = commit_files(repo, {"ci.sh": ENV_DUMP_CI, "katkitconfig.js": config})
    for tenant in ("d-taskrunner", "p-taskrunner"):
        st = await kk.wait((await kk.start_run(tenant, "taskrunner", sha=sha, by="bob")).run_id)
        assert st.status == "succeeded"
    assert sorted(p.name for p in out.iterdir()) == ["DEFAULT_PHASE.0.env", "PROD_PHASE.0.env"]
    assert read_env(out / "PROD_PHASE.0.env")["KATKIT_ENV"] == "PROD"


async def test_ci_failure_stops_the_run_and_nothing_deploys(kk: Katkit, repo: Path, home: Path) -> None:
    sha = commit_files(repo, {"ci.sh": 'echo "broken build" >&2\nexit 3\n'})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="phase BUILD failed: shard 1/1: ci.sh exited 3"):
        await kk.wait(handle.run_id)
    st = await kk.status(handle.run_id)
    assert [p.state for p in st.phases] == ["failed", "skipped", "skipped"] and st.deployed is None
    assert st.phases[0].shards[0].exit_code == 3
    assert LocalPlatform(home / "services").current(kk.config.tenant("d-taskrunner"), "taskrunner") is None
    assert not any((home / "builders").iterdir())
    logs = b"".join([d async for _, d in kk.follow_logs(handle.run_id)]).decode()
    assert "broken build" in logs


async def test_a_failed_shard_stops_its_siblings(kk: Katkit, repo: Path, home: Path) -> None:
    ci = 'if [ "$KATKIT_SHARD_INDEX" = 0 ]; then exit 1; fi\nsleep 60\n'
    sha = commit_files(repo, {"ci.sh": ci, "katkitconfig.js": katkitconfig(phase("TEST", 1, parallelism=2))})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="shard 1/2: ci.sh exited 1"):
        await kk.wait(handle.run_id)
    st = await kk.status(handle.run_id)
    assert [(s.state, s.message) for s in st.phases[0].shards] == [("failed", ""), ("cancelled", "another shard failed")]
    assert not any((home / "builders").iterdir())


async def _awaiting(kk: Katkit, sha: str, by: str = "bob") -> str:
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by=by)
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    return handle.run_id



async def test_prod_waits_for_approval_and_keeps_env_and_replicas(kk: Katkit, sha: str, home: Path) -> None:
    platform = LocalPlatform(home / "services")
    platform.put("p-taskrunner", RunningService(name="taskrunner", image="taskrunner:old", extra_config="GREETING=hi", replicas=3))
    run_id = await _awaiting(kk, sha)
    st = await kk.status(run_id)
    assert st.approval.awaiting and st.phases[-1].state == "awaiting_approval" and st.deployed is None
    waiting = await kk.list(tenant="p-taskrunner", status="awaiting_approval")
    assert run_id in [r.run_id for r in waiting]  # found through the search attributes
    decision = await kk.approve(run_id, "alice", "ship it")
    assert decision.accepted and decision.by == "alice"
    st = await kk.wait(run_id)
    assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
    running = platform.current(kk.config.tenant("p-taskrunner"), "taskrunner")
    assert running is not None and (running.image, running.extra_config, running.replicas) == (f"taskrunner:{sha}", "GREETING=hi", 3)
    record = (await kk.deployments("p-taskrunner", "taskrunner"))[-1]
    assert (record.previous_image, record.approved_by) == ("taskrunner:old", ["alice"])
    assert [(d.kind, d.by, d.text, d.accepted) for d in st.approval.decisions] == [("approve", "alice", "ship it", True)]


async def test_reject_ends_the_run_without_deploying(kk: Katkit, sha: str, home: Path) -> None:
    run_id = await _awaiting(kk, sha)
    await kk.reject(run_id, "alice", "not during the freeze")
    with pytest.raises(RunFailed, match="rejected"):
        await kk.wait(run_id)
    st = await kk.status(run_id)
    assert st.status == "rejected" and st.deployed is None
    assert "not during the freeze" in st.error and st.phases[-1].state == "rejected"
    assert LocalPlatform(home / "services").current(kk.config.tenant("p-taskrunner"), "taskrunner") is None


async def test_signal_from_a_non_approver_is_recorded_and_ignored(kk: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk, sha)
    handle = kk.client.get_workflow_handle(run_id)
    # what the web UI's "Send Signal" dialog and `temporal workflow signal` send: plain JSON
    await handle.signal("approve", {"by": "mallory", "comment": "trust me"})
    await wait_for(lambda: _decisions(kk, run_id, 1))
    st = await kk.status(run_id)
    assert st.status == "awaiting_approval"
    refused = st.approval.decisions[0]
    assert (refused.by, refused.accepted) == ("mallory", False)
    assert "mallory is not an approver of tenant p-taskrunner" in refused.refused_because
    with pytest.raises(BadInput, match="mallory is not an approver"):
        await kk.approve(run_id, "mallory")
    await handle.signal("approve", {"by": "alice", "comment": "ok"})
    st = await kk.wait(run_id)
    assert st.status == "succeeded" and [d.accepted for d in st.approval.decisions] == [False, True]


async def _decisions(kk: Katkit, run_id: str, n: int) -> bool:
    return len((await kk.status(run_id)).approval.decisions) >= n


async def test_self_approval_is_refused_when_the_tenant_forbids_it(kk: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk, sha, by="alice")
    with pytest.raises(BadInput, match="alice started this run and tenant p-taskrunner does not allow self-approval"):
        await kk.approve(run_id, "alice")
    await kk.client.get_workflow_handle(run_id).signal("approve", {"by": "alice"})
    await wait_for(lambda: _decisions(kk, run_id, 1))
    assert (await kk.status(run_id)).status == "awaiting_approval"
    await kk.approve(run_id, "demo", "second pair of eyes")
    assert (await kk.wait(run_id)).deployed is not None


async def test_self_approval_allowed_when_the_tenant_says_so(client, settings, config: KatkitConfig, sha: str) -> None:
    config.tenant("p-taskrunner").approval.allow_self_approval = True
    kk = Katkit(client, settings, config)
    run_id = await _awaiting(kk, sha, by="alice")
    await kk.approve(run_id, "alice")
    assert (await kk.wait(run_id)).status == "succeeded"


async def test_starting_the_same_run_twice_gives_one_run(kk: Katkit, repo: Path) -> None:
    sha = commit_files(repo, {"ci.sh": "sleep 2\n"})
    first = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    second = await kk.start_run("d-taskrunner", "taskrunner", branch="main", by="carol")
    assert (first.existing, second.existing) == (False, True) and first.run_id == second.run_id
    runs = [w async for w in kk.client.list_workflows(f'WorkflowId = "{first.run_id}"')]
    assert len(runs) == 1
    assert (await kk.wait(first.run_id)).started_by == "bob"


def _agent_pids(home: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(home / "builders").encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


async def test_cancel_mid_phase_leaves_no_agent_process(kk: Katkit, repo: Path, home: Path) -> None:
    sha = commit_files(repo, {"ci.sh": "echo started; sleep 120\n"})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: _agent_pids(home))
    await wait_for(lambda: _logged(kk, handle.run_id, b"started"))
    await kk.cancel(handle.run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await kk.wait(handle.run_id)
    assert _agent_pids(home) == [] and not any((home / "builders").iterdir())
    logs = b"".join([d async for _, d in kk.follow_logs(handle.run_id)])
    assert b"started" in logs and b"cancelled: the builder was stopped" in logs
    st = await kk.status(handle.run_id)
    assert st.status == "cancelled" and st.phases[0].state == "cancelled"


async def _logged(kk: Katkit, run_id: str, needle: bytes) -> bool:
    return needle in b"".join([d async for _, d in kk.follow_logs(run_id)])


async def test_phase_timeout_kills_a_hung_ci_sh(client, settings, config: KatkitConfig, repo: Path, home: Path) -> None:
    from datetime import timedelta

    config.tenant("d-taskrunner").phase_timeout = timedelta(seconds=2)
    kk = Katkit(client, settings, config)
    sha = commit_files(repo, {"ci.sh": "echo hanging; sleep 300\n"})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="timed out after the phase timeout of 2 s"):
        await kk.wait(handle.run_id)
    assert _agent_pids(home) == [] and not any((home / "builders").iterdir())


async def test_follow_streams_a_running_phase(kk: Katkit, repo: Path) -> None:
    sha = commit_files(repo, {"ci.sh": "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done\n"})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    chunks = [d async for _, d in kk.follow_logs(handle.run_id, "BUILD", follow=True)]
    text = b"".join(chunks).decode()
    assert [f"line {i}" in text for i in range(1, 6)] == [True] * 5
    assert len(chunks) > 1  # it arrived while the phase ran, not in one piece at the end
    assert os.path.exists(kk.log_store.location((await kk.log_keys(handle.run_id, "BUILD"))[1][0][1]))


@pytest.mark.parametrize("on_timeout,final", [("reject", "rejected"), ("cancel", "cancelled")])
async def test_approval_timeout_decides_by_itself(client, settings, config: KatkitConfig, sha: str, home: Path,
                                                  on_timeout: str, final: str) -> None:
    from datetime import timedelta

    policy = config.tenant("p-taskrunner").approval
    policy.timeout, policy.on_timeout = timedelta(seconds=2), on_timeout
    kk = Katkit(client, settings, config)
    run_id = await _awaiting(kk, sha)
    with pytest.raises(RunFailed, match=final):
        await kk.wait(run_id)
    st = await kk.status(run_id)
    assert st.status == final and st.deployed is None and not st.approval.awaiting
    assert [(d.kind, d.by) for d in st.approval.decisions] == [("timeout", "timeout")]
    assert st.phases[-1].state == final and st.phases[-1].ended_at is not None
    assert LocalPlatform(home / "services").current(config.tenant("p-taskrunner"), "taskrunner") is None


async def test_cancel_at_the_gate(kk: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk, sha)
    await kk.cancel(run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await kk.wait(run_id)
    st = await kk.status(run_id)
    assert st.phases[-1].state == "cancelled" and not st.approval.awaiting and st.deployed is None


async def test_shard_results_carry_a_readable_summary(kk: Katkit, sha: str) -> None:
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await kk.wait(handle.run_id)
    summaries = []
    async for event in kk.client.get_workflow_handle(handle.run_id).fetch_history_events():
        if event.HasField("activity_task_completed_event_attributes"):
            payload = event.activity_task_completed_event_attributes.result.payloads[0].data
            summaries.append(json.loads(payload).get("summary", ""))
    import re

    shard_lines = sorted(s for s in summaries if s)
    assert len(shard_lines) == 3
    assert all(re.fullmatch(r"(BUILD shard 1/1|UNIT_TEST shard [12]/2): ci.sh exited 0 in \d+\.\d s", s) for s in shard_lines), shard_lines


async def test_cancel_during_checkout_ends_cancelled(kk: Katkit, repo: Path, monkeypatch) -> None:
    import activities.shards as acts

    slow = acts.check_run

    def slow_plan(*args, **kwargs):
        import time

        time.sleep(3)  # a slow git fetch
        return slow(*args, **kwargs)

    monkeypatch.setattr(acts, "check_run", slow_plan)
    sha = commit_files(repo, {"n": "1"})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await kk.cancel(handle.run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await kk.wait(handle.run_id)
    assert (await kk.status(handle.run_id)).status == "cancelled"
