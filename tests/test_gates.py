"""Deployment gates across tenants: quorum, wait timer, promotion, rollback, webhooks, memo (local platform)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from katkit.config import KatkitConfig, parse_config
from katkit.errors import BadInput, RunFailed, UnknownName
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from tests.test_run_page import page

pytestmark = pytest.mark.usefixtures("worker")

THREE_TENANTS = """
tenants:
  - {{name: d-app, env: DEV}}
  - {{name: b-app, env: BETA}}
  - name: p-app
    env: PROD
    approval: {{required: true, approvers: [alice, bob, carol], min_approvals: 2}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-app, b-app, p-app]}}
"""


@pytest.fixture
def three(repo: Path, sha: str) -> KatkitConfig:
    return parse_config(THREE_TENANTS.format(url=repo))


@pytest.fixture
def kk3(client, settings, three: KatkitConfig) -> Katkit:
    return Katkit(client, settings, three)


async def _awaiting(kk: Katkit, tenant: str, sha: str, by: str = "dave") -> str:
    handle = await kk.start_run(tenant, "taskrunner", sha=sha, by=by)
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    return handle.run_id


async def test_quorum_of_two(kk3: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk3, "p-app", sha)
    first = await kk3.approve(run_id, "alice", "lgtm")
    assert first.accepted
    st = await kk3.status(run_id)
    assert st.status == "awaiting_approval" and st.approval.approved_by == ["alice"]
    with pytest.raises(BadInput, match=r"alice has approved already \(1 of 2 approvals\)"):
        await kk3.approve(run_id, "alice")
    await kk3.approve(run_id, "bob", "me too")
    st = await kk3.wait(run_id)
    assert st.deployed is not None and st.approval.approved_by == ["alice", "bob"] and st.approval.outcome == "approved"
    record = (await kk3.deployments("p-app", "taskrunner"))[-1]
    assert record.approved_by == ["alice", "bob"]


async def test_one_reject_stops_a_quorum(kk3: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk3, "p-app", sha)
    await kk3.approve(run_id, "alice")
    await kk3.reject(run_id, "carol", "error budget spent")
    with pytest.raises(RunFailed, match="rejected"):
        await kk3.wait(run_id)
    assert (await kk3.status(run_id)).deployed is None


async def test_wait_timer_delays_the_deploy(client, settings, three: KatkitConfig, sha: str) -> None:
    three.tenant("d-app").approval.wait_timer = timedelta(seconds=3)
    kk = Katkit(client, settings, three)
    handle = await kk.start_run("d-app", "taskrunner", sha=sha, by="dave")
    await wait_for(lambda: _phase_state(kk, handle.run_id, "DEPLOY", "wait_timer"))
    st = await kk.wait(handle.run_id)
    deploy = st.phases[-1]
    assert st.deployed is not None and st.deployed.started_at is not None
    assert (st.deployed.started_at - deploy.started_at).total_seconds() >= 3.0
    assert st.approval.deploy_not_before is not None and st.deployed.started_at >= st.approval.deploy_not_before


async def _phase_state(kk: Katkit, run_id: str, phase: str, state: str) -> bool:
    try:
        return any(p.name == phase and p.state == state for p in (await kk.status(run_id)).phases)
    except UnknownName:  # a promotion's child that has not started yet
        return False


async def test_promotion_stops_at_a_rejection(kk3: Katkit, sha: str, home: Path) -> None:
    handle = await kk3.start_promotion("taskrunner", sha[:10], ["d-app", "b-app", "p-app"], by="dave")
    assert handle.run_id == f"promote-taskrunner-{sha[:12]}"
    p_run = f"run-p-app-taskrunner-{sha[:12]}"
    await wait_for(lambda: _promotion_at(kk3, handle.run_id, "p-app"), timeout=60)
    await wait_for(lambda: status_is(kk3, p_run, "awaiting_approval"))
    await kk3.reject(p_run, "bob", "not this week")
    with pytest.raises(RunFailed, match="promotion .* rejected at p-app"):
        await kk3.wait_promotion(handle.run_id)
    st = await kk3.promotion_status(handle.run_id)
    assert [(s.tenant, s.status) for s in st.steps] == [("d-app", "succeeded"), ("b-app", "succeeded"), ("p-app", "rejected")]
    platform = LocalPlatform(home / "services")
    assert platform.current(kk3.config.tenant("b-app"), "taskrunner").image == f"taskrunner:{sha}"
    assert platform.current(kk3.config.tenant("p-app"), "taskrunner") is None


async def _promotion_at(kk: Katkit, promotion_id: str, tenant: str) -> bool:
    return (await kk.promotion_status(promotion_id)).current == tenant


async def test_cancelling_a_promotion_cancels_its_running_child(kk3: Katkit, repo: Path, home: Path) -> None:
    sha = commit_files(repo, {"ci.sh": "echo slow; sleep 120\n"})
    handle = await kk3.start_promotion("taskrunner", sha, ["d-app", "p-app"], by="dave")
    d_run = f"run-d-app-taskrunner-{sha[:12]}"
    await wait_for(lambda: _phase_state(kk3, d_run, "BUILD", "running"), timeout=60)
    await wait_for(lambda: any((home / "builders").iterdir()) if (home / "builders").exists() else False)
    await kk3.cancel(handle.run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await kk3.wait_promotion(handle.run_id)
    assert (await kk3.status(d_run)).status == "cancelled"
    assert not any((home / "builders").iterdir())


async def test_rollback_redeploys_the_previous_image_keeping_env_and_replicas(kk3: Katkit, repo: Path, sha: str,
                                                                             home: Path) -> None:
    platform = LocalPlatform(home / "services")
    platform.put("d-app", RunningService(name="taskrunner", image="taskrunner:ancient", extra_config="GREETING=hi", replicas=3))
    await kk3.wait((await kk3.start_run("d-app", "taskrunner", sha=sha, by="dave")).run_id)
    sha2 = commit_files(repo, {"CHANGES.md": "v2\n"})
    await kk3.wait((await kk3.start_run("d-app", "taskrunner", sha=sha2, by="dave")).run_id)
    handle = await kk3.start_rollback("d-app", "taskrunner", by="erin")
    st = await kk3.wait(handle.run_id)
    assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
    running = platform.current(kk3.config.tenant("d-app"), "taskrunner")
    assert (running.image, running.extra_config, running.replicas) == (f"taskrunner:{sha}", "GREETING=hi", 3)
    last = (await kk3.deployments("d-app", "taskrunner"))[-1]
    assert (last.kind, last.previous_image, last.started_by) == ("rollback", f"taskrunner:{sha2}", "erin")
    back = await kk3.start_rollback("d-app", "taskrunner", to_sha=sha2[:8], by="erin")
    assert (await kk3.wait(back.run_id)).deployed.image == f"taskrunner:{sha2}"
    with pytest.raises(BadInput, match="is what runs now"):
        await kk3.start_rollback("d-app", "taskrunner", to_sha=sha2[:8])


async def test_rollback_goes_through_the_gate(kk3: Katkit, repo: Path, sha: str) -> None:
    for s in (sha, commit_files(repo, {"CHANGES.md": "v2\n"})):
        run_id = await _awaiting(kk3, "p-app", s)
        await kk3.approve(run_id, "alice")
        await kk3.approve(run_id, "bob")
        await kk3.wait(run_id)
    handle = await kk3.start_rollback("p-app", "taskrunner", by="dave")
    await wait_for(lambda: status_is(kk3, handle.run_id, "awaiting_approval"))
    await kk3.approve(handle.run_id, "alice")
    await kk3.approve(handle.run_id, "carol")
    assert (await kk3.wait(handle.run_id)).deployed.image == f"taskrunner:{sha}"


class _Hook(BaseHTTPRequestHandler):
    events: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    _Hook.events = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.events
    server.shutdown()


async def test_webhooks_receive_events_and_a_dead_one_blocks_nothing(client, settings, three: KatkitConfig, repo: Path,
                                                                    sha: str, webhook) -> None:
    url, events = webhook
    dead = "http://127.0.0.1:9/never"  # the discard port: nothing listens there
    for t in ("p-app", "d-app"):
        three.tenant(t).webhooks = [dead, url]
    kk = Katkit(client, settings, three)
    run_id = await _awaiting(kk, "p-app", sha)
    await kk.approve(run_id, "alice")
    await kk.approve(run_id, "bob", "ok")
    st = await kk.wait(run_id)
    assert st.deployed is not None
    prod = [e for e in events if e["run_id"] == run_id]
    assert [e["event"] for e in prod] == ["awaiting_approval", "approved", "deployed"]
    assert prod[1]["by"] == ["alice", "bob"] and prod[2]["image"] == f"taskrunner:{sha}"
    assert all(e["tenant"] == "p-app" and e["sha"] == sha and e["repo"] == "taskrunner" for e in prod)
    assert prod[0]["url"].endswith(f"/workflows/{run_id}")
    bad = commit_files(repo, {"ci.sh": "exit 2\n"})
    failing = await kk.start_run("d-app", "taskrunner", sha=bad, by="dave")
    with pytest.raises(RunFailed):
        await kk.wait(failing.run_id)
    assert [e["event"] for e in events if e["run_id"] == failing.run_id] == ["failed"]


async def test_memo_and_result_hold_every_decision(kk3: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk3, "p-app", sha)
    handle = kk3.client.get_workflow_handle(run_id)
    await handle.signal("approve", {"by": "mallory"})
    await kk3.approve(run_id, "alice", "one")
    await kk3.approve(run_id, "carol", "two")
    st = await kk3.wait(run_id)
    assert [(d.by, d.accepted) for d in st.approval.decisions] == [("mallory", False), ("alice", True), ("carol", True)]
    memo = await (await handle.describe()).memo_value("decisions")
    assert memo == ["approve by mallory (refused)", "approve by alice", "approve by carol"]
    summary = await (await handle.describe()).memo_value("summary")
    assert summary.startswith("succeeded: DEPLOY") and f"deployed taskrunner:{sha}" in summary


async def test_status_values_move_through_search_attributes(kk3: Katkit, sha: str) -> None:
    run_id = await _awaiting(kk3, "p-app", sha)
    waiting = await kk3.list(tenant="p-app", status="awaiting_approval")
    assert [r.run_id for r in waiting] == [run_id] and waiting[0].phase == "DEPLOY"
    await kk3.approve(run_id, "alice")
    await kk3.approve(run_id, "bob")
    await kk3.wait(run_id)
    await wait_for(lambda: _listed(kk3, run_id, "succeeded"))


async def _listed(kk: Katkit, run_id: str, status: str) -> bool:
    return run_id in [r.run_id for r in await kk.list(status=status)]


async def test_lock_state_is_visible_while_a_deploy_waits(kk3: Katkit, sha: str) -> None:
    await kk3.wait((await kk3.start_run("d-app", "taskrunner", sha=sha, by="dave")).run_id)
    locks = await kk3.locks(tenant="d-app")
    assert [(lk.tenant, lk.service, lk.holder, lk.waiters) for lk in locks] == [("d-app", "taskrunner", None, [])]
    with pytest.raises(UnknownName, match="unknown tenant 'nope'"):  # a typo lists nothing: it is refused
        await kk3.locks(tenant="nope")


SMOKE_TENANTS = """
tenants:
  - name: d-safe
    env: DEV
    on_post_deploy_failure: rollback
    webhooks: ["{hook}"]
  - {{name: d-plain, env: DEV}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-safe, d-plain]}}
"""
SMOKE_CI = """#!/usr/bin/env bash
set -eu
if [ "$KATKIT_PHASE" = SMOKE ] && [ ! -f smoke_ok ]; then echo "smoke test: /health answered 500"; exit 5; fi
echo "$KATKIT_PHASE ok"
"""


def smoke_files(ok: bool) -> dict[str, str | None]:
    """BUILD, DEPLOY, then SMOKE (an execution phase after the deploy), which fails unless ``ok``."""
    phases = [{"Name": n, "PhaseType": t, "BuildParams": "", "Order": o, "Parallelism": 1, "ContinerImage": None}
              for n, t, o in (("BUILD", 4, 1), ("DEPLOY", 1, 2), ("SMOKE", 4, 3))]
    return {"ci.sh": SMOKE_CI, "katkitconfig.js": json.dumps([{"EnvName": "default", "WorkFlow": phases}]),
            "smoke_ok": "yes\n" if ok else None}


async def test_a_failed_smoke_test_rolls_back_by_itself(client, settings, repo: Path, sha: str, home: Path,
                                                         webhook) -> None:
    url, events = webhook
    kk = Katkit(client, settings, parse_config(SMOKE_TENANTS.format(url=repo, hook=url)))
    platform = LocalPlatform(home / "services")
    for t in ("d-safe", "d-plain"):
        platform.put(t, RunningService(name="taskrunner", image="taskrunner:ancient", extra_config="GREETING=hi", replicas=3))
    good = commit_files(repo, smoke_files(ok=True))
    for t in ("d-safe", "d-plain"):
        await kk.wait((await kk.start_run(t, "taskrunner", sha=good, by="dave")).run_id)
    bad = commit_files(repo, smoke_files(ok=False))
    handle = await kk.start_run("d-safe", "taskrunner", sha=bad, by="dave")
    with pytest.raises(RunFailed, match=rf"phase SMOKE failed: .*\(rolled back to taskrunner:{good}\)"):
        await kk.wait(handle.run_id)
    st = await kk.status(handle.run_id)
    assert st.status == "failed" and st.error.endswith(f"(rolled back to taskrunner:{good})")
    assert st.deployed is not None and st.deployed.image == f"taskrunner:{bad}"
    assert st.rolled_back is not None and (st.rolled_back.image, st.rolled_back.previous_image) == (
        f"taskrunner:{good}", f"taskrunner:{bad}")
    assert [(p.name, p.state) for p in st.phases] == [("BUILD", "succeeded"), ("DEPLOY", "succeeded"), ("SMOKE", "failed")]
    running = platform.current(kk.config.tenant("d-safe"), "taskrunner")  # the previous image runs again, as it ran
    assert (running.image, running.extra_config, running.replicas) == (f"taskrunner:{good}", "GREETING=hi", 3)
    last = (await kk.deployments("d-safe", "taskrunner"))[-1]
    assert (last.kind, last.image, last.previous_image, last.started_by, last.failed_phase, last.run_id) == (
        "auto_rollback", f"taskrunner:{good}", f"taskrunner:{bad}", "katkit", "SMOKE", handle.run_id)
    mine = {e["event"]: e for e in events if e["run_id"] == handle.run_id}  # each its own delivery: in any order
    assert sorted(mine) == ["auto_rolled_back", "deployed", "failed"]
    assert (mine["auto_rolled_back"]["image"], mine["auto_rolled_back"]["failed_phase"]) == (f"taskrunner:{good}", "SMOKE")
    assert f"**Rolled back** by katkit to `taskrunner:{good}` (3 replica(s))" in await page(kk, handle.run_id)
    trail = await kk.audit(handle.run_id)  # the trail tells it, and agrees with the run
    assert trail.consistent, trail.disagreements
    assert any(e.what == "deployed" and e.text.startswith(f"auto_rollback: taskrunner:{good} runs") for e in trail.entries)
    # a tenant that did not ask for it: the run fails, the new image stays
    plain = await kk.start_run("d-plain", "taskrunner", sha=bad, by="dave")
    with pytest.raises(RunFailed, match="phase SMOKE failed"):
        await kk.wait(plain.run_id)
    assert (await kk.status(plain.run_id)).rolled_back is None
    assert platform.current(kk.config.tenant("d-plain"), "taskrunner").image == f"taskrunner:{bad}"
