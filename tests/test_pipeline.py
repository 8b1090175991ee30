"""Pipelined builders (issue 16, point 1): while a phase runs, the next execution phases' builders are prepared
(local and Docker: the agent started and checked out, waiting to be told), with no secret; the next phase only
tells them to start ci.sh, with its environment (secrets among it) on a FIFO or the container's stdin. One that
no phase uses (the phase before failed, the run was cancelled) is removed with its agent, one never told in time
is made anew, and the reaper knows them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from katkit.config import parse_config
from katkit.errors import RunFailed
from katkit.models import RunStatus
from katkit.sample import commit_files
from starter.api import Katkit
from tests.chaos import processes_in
from tests.conftest import in_process_worker, status_is, wait_for
from tests.test_replay import HISTORIES, assert_replays

PIPELINE = json.dumps([{"EnvName": "default", "WorkFlow": [
    {"Name": name, "PhaseType": 4, "Order": i, "Parallelism": 2 if name == "B" else 1}
    for i, name in enumerate(["A", "B", "C"], start=1)]}])
# phase A waits until both shards of B are prepared (checked out, their agents waiting), then says so; FAIL_A / SLOW_A
CI = """set -e
if [ "$KATKIT_PHASE" = A ]; then
  tries=100; [ -f cold ] && tries=10  # nothing to wait for there: look for a second
  for i in $(seq $tries); do
    n=$(grep -l "ready: ci.sh starts" "$HOME"/../katkit-*-b-*/log 2>/dev/null | wc -l)
    c=$(grep -l "ready: ci.sh starts" "$HOME"/../katkit-*-c-*/log 2>/dev/null | wc -l)
    [ "$n$c" = 21 ] && break; sleep 0.1
  done
  echo "B prepared: $n, C prepared: $c, ci.sh started in B: $(cat "$HOME"/../katkit-*-b-*/log 2>/dev/null | grep -c 'running ci.sh')"
  [ -f fail_a ] && exit 3
  [ -f slow_a ] && sleep 60
fi
if [ "$KATKIT_PHASE" = B ] && [ -f fail_b ]; then
  [ "$KATKIT_SHARD_INDEX" = 0 ] && exit 4
  sleep 60
fi
echo "phase $KATKIT_PHASE shard $KATKIT_SHARD_INDEX: secret ${TOKEN:-none}"
"""
CONFIG = """
tenants:
  - {{name: d-pipe, env: DEV}}
  - {{name: d-sec, env: DEV, secrets: {{TOKEN: "env:KATKIT_TEST_PIPE_TOKEN"}}}}
  - {{name: d-cold, env: DEV, prepare_ahead: 0}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-pipe, d-sec, d-cold]}}
"""
TOKEN = "pipe-s3cret-value"


async def _log(ks: Katkit, run_id: str, phase: str) -> str:
    return "".join(data.decode() for _, data in [x async for x in ks.follow_logs(run_id, phase)])


async def _failed_run(ks: Katkit, repo: Path, flag: str, match: str) -> tuple[str, RunStatus]:
    """A run of the pipeline on d-pipe with ``flag`` committed, which fails with ``match``; no builder and no agent
    is left once it has ended."""
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, flag: "1"})
    handle = await ks.start_run("d-pipe", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match=match):
        await ks.wait(handle.run_id)
    assert _builders(ks.settings.home) == []  # removed before the run ended, waiting agents with them
    assert processes_in(ks.settings.home / "builders") == []
    return handle.run_id, await ks.status(handle.run_id)


async def _replays(ks: Katkit, run_id: str, record_as: str) -> None:
    """The run's history replays; recorded as ``record_as`` with KATKIT_RECORD_HISTORIES=1."""
    history = await ks.client.get_workflow_handle(run_id).fetch_history()
    await assert_replays([history])
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / record_as).write_text(history.to_json())


def _ready(home: Path, phase: str) -> list[Path]:
    """The builders of ``phase`` whose agent has checked out and waits to be told to start."""
    return [p for p in (home / "builders").glob(f"katkit-*-{phase}-*/log") if b"ready: ci.sh starts" in p.read_bytes()]


def _builders(home: Path) -> list[str]:
    root = home / "builders"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture
def ks(kk: Katkit, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Katkit:
    monkeypatch.setenv("KATKIT_TEST_PIPE_TOKEN", TOKEN)
    return Katkit(kk.client, kk.settings, parse_config(CONFIG.format(url=repo)))


@pytest.mark.usefixtures("worker")
async def test_the_next_phase_is_prepared_while_one_runs_and_only_starts_ci_sh(ks: Katkit, repo: Path) -> None:
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE})
    handle = await ks.start_run("d-pipe", "taskrunner", sha=sha, by="bob")
    st = await ks.wait(handle.run_id)
    assert [p.state for p in st.phases] == ["succeeded"] * 3
    a = await _log(ks, handle.run_id, "A")
    assert "B prepared: 2, C prepared: 1, ci.sh started in B: 0" in a, a  # checked out, ci.sh not started
    b = await _log(ks, handle.run_id, "B")
    for part in (f"checking out {sha}", "ready: ci.sh starts when the phase before has ended", "told to start",
                 "running ci.sh"):
        assert b.count(f"[katkit-agent] {part}") == 2, (part, b)
    assert "secret none" in b
    c = await _log(ks, handle.run_id, "C")
    assert "[katkit-agent] told to start" in c, c
    a_told = a.index("[katkit-agent] told to start")  # A's builder too: the checkout's host prepared it
    assert a.index("[katkit-agent] ready: ci.sh starts") < a_told < a.index("[katkit-agent] running ci.sh"), a
    assert _builders(ks.settings.home) == [] and processes_in(ks.settings.home / "builders") == []
    history = await ks.client.get_workflow_handle(handle.run_id).fetch_history()
    scheduled = [e.activity_task_scheduled_event_attributes for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert "prepare_builder" not in {a.activity_type.name for a in scheduled}  # no activity per prepared builder
    [checkout] = [a for a in scheduled if a.activity_type.name == "checkout"]
    assert json.loads(checkout.input.payloads[0].data)["prepare_ahead"] == 2  # A and B, from the checkout's host
    handed = [[p["phase"]["name"] for p in json.loads(a.input.payloads[0].data)["prepare"]]
              for a in scheduled if a.activity_type.name == "run_shard"]
    assert handed == [["C"], [], [], []], handed  # A's shard hands C over; B's two and C's shard have none left
    await _replays(ks, handle.run_id, "pipeline3_three_phases.json")


@pytest.mark.usefixtures("worker")
async def test_prepare_ahead_0_starts_each_builder_when_its_phase_starts(ks: Katkit, repo: Path) -> None:
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, "cold": "1"})
    handle = await ks.start_run("d-cold", "taskrunner", sha=sha, by="bob")
    st = await ks.wait(handle.run_id)
    assert [p.state for p in st.phases] == ["succeeded"] * 3
    assert "B prepared: 0, C prepared: 0" in await _log(ks, handle.run_id, "A")
    b = await _log(ks, handle.run_id, "B")
    assert b.count(f"[katkit-agent] checking out {sha}") == 2 and "ready:" not in b and "told to start" not in b, b
    history = await ks.client.get_workflow_handle(handle.run_id).fetch_history()
    assert not [e for e in history.events if e.activity_task_scheduled_event_attributes.activity_type.name
                == "prepare_builder"]


@pytest.mark.usefixtures("worker")
async def test_prepared_builders_hold_no_secret_and_go_when_the_phase_before_fails(ks: Katkit, repo: Path) -> None:
    run_id, st = await _failed_run(ks, repo, "fail_a", "phase A failed")
    assert "B prepared: 2" in await _log(ks, run_id, "A")
    assert [p.state for p in st.phases] == ["failed", "skipped", "skipped"], st.phases
    await _replays(ks, run_id, "pipeline3_phase_before_failed.json")


@pytest.mark.usefixtures("worker")
async def test_a_prepared_phase_that_fails_fast_leaves_no_builder(ks: Katkit, repo: Path) -> None:
    run_id, st = await _failed_run(ks, repo, "fail_b", "phase B failed: shard 1/2")
    assert [p.state for p in st.phases] == ["succeeded", "failed", "skipped"], st.phases
    assert [s.state for s in st.phases[1].shards] == ["failed", "cancelled"]
    await _replays(ks, run_id, "pipeline3_prepared_phase_failed_fast.json")


@pytest.mark.usefixtures("worker")
async def test_a_cancel_removes_the_running_and_the_prepared_builders(ks: Katkit, repo: Path) -> None:
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, "slow_a": "1"})
    handle = await ks.start_run("d-sec", "taskrunner", sha=sha, by="bob")  # secrets: none in a prepared builder
    await wait_for(lambda: len(_ready(ks.settings.home, "b")) == 2, timeout=30)
    spec_texts = [p.read_text() for p in (ks.settings.home / "builders").glob("katkit-*-b-*/spec.json")]
    assert spec_texts and all(TOKEN not in t and '"katkit.prepared": "1"' in t for t in spec_texts)
    agents = processes_in(ks.settings.home / "builders")
    assert len(agents) >= 3  # A's agent (and its ci.sh) and B's two, waiting
    for pid in agents:  # no prepared agent holds the secret in its environment or arguments
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # ended since it was listed (a git of C's checkout, prepared meanwhile)
            continue
        assert TOKEN.encode() not in cmdline
        assert TOKEN.encode() not in environ or b"KATKIT_PHASE=A" in environ, pid
    await ks.cancel(handle.run_id)
    await wait_for(lambda: status_is(ks, handle.run_id, "cancelled"), timeout=30)
    assert _builders(ks.settings.home) == [] and processes_in(ks.settings.home / "builders") == []


@pytest.mark.usefixtures("worker")
async def test_a_run_cancelled_while_its_checkout_runs_leaves_no_prepared_builder(ks: Katkit, repo: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkout hands the first phases' builders to its host's preparer once it has read the plan; a run cancelled
    before that ends at once (the checkout, which never heartbeats, runs on and hands them over all the same). Nothing
    of the run can remove them then: the host does, once it finds their run closed, within seconds, not at the
    reaper's next pass (minutes)."""
    import threading

    import activities.shards

    reading, go_on = threading.Event(), threading.Event()
    read_plan = activities.shards.check_run

    def slow_check_run(*args, **kwargs):  # the checkout activity (in-process worker) reads the plan once told to
        reading.set()
        go_on.wait(60)
        return read_plan(*args, **kwargs)

    monkeypatch.setattr(activities.shards, "check_run", slow_check_run)
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, "slow_a": "1"})
    handle = await ks.start_run("d-pipe", "taskrunner", sha=sha, by="bob")
    try:
        await wait_for(reading.is_set, timeout=30)
        await ks.cancel(handle.run_id)
        await wait_for(lambda: status_is(ks, handle.run_id, "cancelled"), timeout=30)
    finally:
        go_on.set()
    await wait_for(lambda: _builders(ks.settings.home), timeout=30)  # the checkout ended since, and handed them over
    await wait_for(lambda: not _builders(ks.settings.home) and not processes_in(ks.settings.home / "builders"),
                   timeout=45)


async def test_the_reaper_removes_prepared_builders_of_a_closed_run(client, settings, repo: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from katkit import preparer
    from katkit.builders.local import LocalBuilder
    from katkit.reaper import reap_once

    monkeypatch.setattr(preparer, "UNCLAIMED_S", 3600.0)  # the host's own watch would remove some first
    monkeypatch.setenv("KATKIT_TEST_PIPE_TOKEN", TOKEN)
    ks = Katkit(client, settings, parse_config(CONFIG.format(url=repo)))
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, "slow_a": "1"})
    async with in_process_worker(client, settings):
        handle = await ks.start_run("d-pipe", "taskrunner", sha=sha, by="bob")
        await wait_for(lambda: len(_ready(settings.home, "b")) == 2, timeout=30)
        await client.get_workflow_handle(handle.run_id).terminate("test: nothing cleans up after a terminate")
        await asyncio.sleep(0.5)
    builder = LocalBuilder(settings.home / "builders")
    prepared = [n for n, labels in builder.list().items() if labels.get("katkit.prepared") == "1"]
    assert len(prepared) == 4  # A's (prepared by the checkout's host), B's two shards and C's one (prepare_ahead: 2)
    removed = await reap_once(client, [builder], settings.task_queue)
    assert set(prepared) <= set(removed) and not [n for n in builder.list() if n in prepared]
    await wait_for(lambda: not [p for p in processes_in(settings.home / "builders")
                                if b"-b-" in Path(f"/proc/{p}/cmdline").read_bytes()], timeout=15)


async def test_docker_prepares_a_waiting_container_without_secrets(client, settings, repo: Path, docker_api,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KATKIT_TEST_PIPE_TOKEN", TOKEN)
    tenant = f"d-pipe-{uuid.uuid4().hex[:6]}"
    ks = Katkit(client, settings, parse_config(f"""
tenants:
  - name: {tenant}
    env: DEV
    builder: docker
    secrets: {{TOKEN: "env:KATKIT_TEST_PIPE_TOKEN"}}
    docker: {{builder_network: none, tenant_network: none}}
links:
  - {{repo: taskrunner, url: {repo}, tenants: [{tenant}]}}
"""))
    ci = 'if [ "$KATKIT_PHASE" = A ]; then sleep 4; fi\necho "phase $KATKIT_PHASE: secret ${TOKEN:-none}"\n'
    sha = commit_files(repo, {"ci.sh": ci, "katkitconfig.js": PIPELINE})
    seen: list[dict[str, object]] = []
    since = int(time.time()) - 1
    async with in_process_worker(client, settings):
        handle = await ks.start_run(tenant, "taskrunner", sha=sha, by="bob")

        def prepared() -> list[dict[str, object]]:
            found = docker_api.containers(all=True, filters={"label": [f"katkit.tenant={tenant}", "katkit.prepared=1",
                                                                       "katkit.phase=B"]})
            infos = [docker_api.inspect_container(c["Id"]) for c in found] if len(found) == 2 else []
            return infos if all(b"ready: ci.sh starts" in docker_api.logs(i["Id"]) for i in infos) else []

        seen = await wait_for(prepared, timeout=30)
        st = await ks.wait(handle.run_id)
    for info in seen:  # started (its agent checks out, then waits on stdin), no secret in its configuration
        assert info["State"]["Status"] == "running" and info["Config"]["Labels"]["katkit.phase"] == "B", (info["State"], info["Config"]["Labels"], info["Name"])
        assert info["Config"]["OpenStdin"] and TOKEN not in json.dumps(info)
    assert [p.state for p in st.phases] == ["succeeded"] * 3
    b = await _log(ks, handle.run_id, "B")
    assert b.count("secret ***") == 2 and b.count("[katkit-agent] told to start") == 2, b  # the secret came on stdin
    for name in "ABC":  # each log whole to its last line, though the pump held back what could begin a secret
        whole = await _log(ks, handle.run_id, name)
        assert re.search(r"\[katkit-agent\] ci.sh exited 0 in \d+\.\d s\n$", whole), (name, whole[-300:])
    events = docker_api.events(since=since, until=int(time.time()) + 1, decode=True,
                               filters={"event": "create", "label": f"katkit.tenant={tenant}"})
    assert sorted(e["Actor"]["Attributes"]["katkit.phase"] for e in events) == ["A", "B", "B", "C"]  # none made anew
    assert not docker_api.containers(all=True, filters={"label": f"katkit.tenant={tenant}"})
