"""Chaos tests: the Temporal server killed -9 and restarted mid-phase, a worker frozen, a ci.sh that ignores SIGTERM.

Each asserts what a user relies on: every shard's ci.sh started exactly once (marker file), the log holds every
line exactly once and in order with no cancel marker, and nothing is left behind (no process, no builder
directory). The long variants (a 5 min outage, a 60 s freeze) run with ``./dev.sh chaos``
(``KATKIT_CHAOS_LONG=1``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.chaos import Scene, eventually, processes_in, slow_lines
from tests.test_replay import HISTORIES, assert_replays

LONG = os.environ.get("KATKIT_CHAOS_LONG") == "1"
pytestmark = pytest.mark.timeout(900)  # outages of up to 5 min, then the run's own end


@pytest.fixture
def scene(tmp_path: Path):
    s = Scene(tmp_path)
    s.server.start()
    try:
        yield s
    finally:
        s.close()


async def _slow_shards_running(scene: Scene) -> bool:
    """Both SLOW shards have printed a few lines into the log store (local and Docker builders alike)."""
    logs = list(scene.logs.rglob("SLOW/*.log"))
    return len(logs) == 2 and all(b"line 3" in p.read_bytes() for p in logs)


async def assert_whole_run(scene: Scene, kk, run_id: str, timeout: float) -> None:
    st = await eventually(lambda: _ended(kk, run_id), timeout=timeout)
    assert st.status == "succeeded", st.error
    assert sorted(scene.starts()) == ["BUILD 0", "SLOW 0", "SLOW 1"]  # every ci.sh started exactly once
    assert_logs_whole(scene)
    for host in scene.hosts:
        builders = host.home / "builders"
        assert not builders.exists() or not any(builders.iterdir()), list(builders.iterdir())
        assert processes_in(host.home) == []


def assert_logs_whole(scene: Scene) -> None:
    """Each SLOW shard's log: every line once, in order, from one ci.sh, no cancel marker."""
    for shard in (0, 1):
        [log] = scene.logs.rglob(f"SLOW/{shard}.log")
        text = log.read_text()
        assert slow_lines(text) == [f"line {i}" for i in range(1, scene.lines + 1)], text  # once each, in order
        assert "cancelled" not in text and text.count("[katkit-agent] running ci.sh") == 1, text
        assert "[katkit-agent] ci.sh exited 0 in" in text and text.count("SLOW done") == 1, text


async def start_slow_run(scene: Scene):
    """One worker host, and a run whose SLOW shards are printing: the moment to strike."""
    scene.host("a").start()
    kk = await scene.katkit()
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=scene.sha, by="chaos")
    await eventually(lambda: _slow_shards_running(scene), timeout=90)
    return kk, handle


async def _ended(kk, run_id: str):
    st = await kk.status(run_id)
    return st if st.status in ("succeeded", "failed", "cancelled", "rejected") else None


@pytest.mark.parametrize("outage_s", [15, 60] + ([300] if LONG else []))
async def test_server_killed_and_restarted_mid_phase(scene: Scene, outage_s: int) -> None:
    kk, handle = await start_slow_run(scene)
    scene.server.kill()
    await asyncio.sleep(outage_s)
    scene.server.start()
    await assert_whole_run(scene, kk, handle.run_id, timeout=120 + outage_s)


@pytest.mark.parametrize("fault", ["server killed 15 s", "worker frozen 15 s"])
async def test_outages_on_docker_builders(tmp_path: Path, docker_api, fault: str) -> None:
    """The same outages with Docker builders: one container per shard ever, the log whole."""
    scene = Scene(tmp_path, builder="docker")
    scene.server.start()
    since = int(time.time()) - 1
    try:
        kk, handle = await start_slow_run(scene)
        if fault.startswith("server"):
            scene.server.kill()
            await asyncio.sleep(15)
            scene.server.start()
        else:
            scene.hosts[0].signal(signal.SIGSTOP)
            await asyncio.sleep(15)
            scene.hosts[0].signal(signal.SIGCONT)
        st = await eventually(lambda: _ended(kk, handle.run_id), timeout=150)
        assert st.status == "succeeded", st.error
        assert_logs_whole(scene)
        created = [e for e in docker_api.events(since=since, until=int(time.time()) + 1, decode=True,
                                                filters={"event": "create", "label": f"katkit.run={handle.run_id}"})]
        assert len(created) == 3, created  # BUILD and the two SLOW shards: one container each, ever
        assert docker_api.containers(all=True, filters={"label": f"katkit.run={handle.run_id}"}) == []
    finally:
        scene.close()


@pytest.mark.parametrize("freeze_s", [15] + ([60] if LONG else []))
async def test_worker_frozen_mid_phase(scene: Scene, freeze_s: int) -> None:
    kk, handle = await start_slow_run(scene)
    [host] = scene.hosts
    host.signal(signal.SIGSTOP)
    await asyncio.sleep(freeze_s)
    host.signal(signal.SIGCONT)
    await assert_whole_run(scene, kk, handle.run_id, timeout=120 + freeze_s)


TERM_TRAPS = {
    "ignores TERM": "trap '' TERM; echo trapped; sleep 3600",
    "traps TERM in a loop": "trap 'echo got TERM' TERM; echo trapped; while true; do sleep 0.2; done",
}


@pytest.mark.parametrize("how, trap, grace", [
    ("cancel", "ignores TERM", 3.0), ("cancel", "traps TERM in a loop", 3.0),
    ("phase timeout", "traps TERM in a loop", 3.0),
    ("phase timeout", "ignores TERM", 12.0),  # a grace longer than the heartbeat timeout: the stop heartbeats
])
async def test_a_ci_sh_that_traps_term_is_gone_within_the_grace(trap: str, how: str, grace: float, client, settings, config,
                                                                repo: Path, home: Path, monkeypatch) -> None:
    from datetime import timedelta

    from katkit.errors import RunFailed
    from katkit.sample import commit_files
    from starter.api import Katkit
    from tests.conftest import in_process_worker, wait_for

    monkeypatch.setenv("KATKIT_STOP_GRACE", str(grace))
    if how == "phase timeout":
        config.tenant("d-taskrunner").phase_timeout = timedelta(seconds=4)
    kk = Katkit(client, settings, config)
    sha = commit_files(repo, {"ci.sh": f"#!/usr/bin/env bash\n{TERM_TRAPS[trap]}\n"})
    async with in_process_worker(client, settings):
        handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="chaos")
        await wait_for(lambda: any(b"trapped" in p.read_bytes() for p in (home / "builders").glob("*/log")))
        assert processes_in(home)
        if how == "cancel":
            await kk.cancel(handle.run_id)
            since = time.monotonic()
        else:
            since = (await kk.status(handle.run_id)).phases[0].started_at.timestamp() + 4 - time.time() + time.monotonic()
        await wait_for(lambda: not processes_in(home), timeout=30, interval=0.05)
        gone_after = time.monotonic() - since
        with pytest.raises(RunFailed, match="cancelled" if how == "cancel" else "timed out"):
            await kk.wait(handle.run_id)
        st = await kk.status(handle.run_id)  # a cancelled run's last state is a query: while the worker runs
    assert gone_after <= grace + 2, f"ci.sh outlived the {grace} s grace by {gone_after - grace:.1f} s"
    assert not any((home / "builders").iterdir())
    shard = st.phases[0].shards[0]
    assert not shard.reattached and (shard.exit_code == 124 if how == "phase timeout" else shard.state == "cancelled")


def _hosts_with_slow_builders(scene: Scene) -> list:
    return [h for h in scene.hosts if any((h.home / "builders").glob("*-slow-*"))]


@pytest.mark.parametrize("comes_back", [True, False])
async def test_two_hosts_one_killed_mid_phase(scene: Scene, comes_back: bool) -> None:
    """Two worker hosts (homes of their own) on one task queue; the one running the shards is killed -9.

    Restarted: its shards re-attach there. Gone: after the tenant's host_wait they start afresh on the other host,
    the log says so in one line, and the old builders are reaped when the host returns."""
    from datetime import timedelta

    scene.config.tenant("d-taskrunner").host_wait = timedelta(seconds=5)
    for name in ("a", "b"):
        scene.host(name).start()
    kk = await scene.katkit()
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=scene.sha, by="chaos")
    await eventually(lambda: _slow_shards_running(scene), timeout=60)
    [victim] = _hosts_with_slow_builders(scene)  # every shard of a run goes to the host that checked it out
    [other] = [h for h in scene.hosts if h is not victim]
    victim.signal(signal.SIGKILL)
    if comes_back:
        await asyncio.sleep(3)
        victim.start()
        await assert_whole_run(scene, kk, handle.run_id, timeout=120)
        assert not any((other.home / "builders").glob("*"))  # nothing ever ran on the other host
        st = await kk.status(handle.run_id)
        assert all(s.reattached and s.generation == 0 for s in st.phases[1].shards)
        return
    # gone: the shards start afresh on the other host after host_wait
    await eventually(lambda: len(list((other.home / "builders").glob("*-slow-*"))) == 2, timeout=90)
    victim.start()  # it returns while the run goes on elsewhere: its reaper removes its old builders at start
    await eventually(lambda: not any((victim.home / "builders").glob("*")) and not processes_in(victim.home), timeout=60)
    st = await eventually(lambda: _ended(kk, handle.run_id), timeout=120)
    assert st.status == "succeeded", st.error
    assert sorted(scene.starts()) == ["BUILD 0", "SLOW 0", "SLOW 0", "SLOW 1", "SLOW 1"]
    for shard in (0, 1):
        [log] = scene.logs.rglob(f"SLOW/{shard}.1.log")  # generation 1's own log; the one left behind stays apart
        text = log.read_text()
        victim_queue = scene.settings.model_copy(update={"home": victim.home}).host_queue
        other_queue = scene.settings.model_copy(update={"home": other.home}).host_queue
        assert text.splitlines()[0] == (
            f"[katkit] host {victim_queue} did not come back within 0:00:05: this shard started afresh on {other_queue} "
            f"(the builder left on {victim_queue} is removed when that host returns)")
        assert slow_lines(text) == [f"line {i}" for i in range(1, scene.lines + 1)], text
    assert [(s.generation, s.host) for s in st.phases[1].shards] == [(1, other_queue)] * 2
    for host in scene.hosts:
        assert not any((host.home / "builders").glob("*")) and processes_in(host.home) == []
    history = await kk.client.get_workflow_handle(handle.run_id).fetch_history()
    await assert_replays([history])  # the path of a shard moved to another host, replayed (and kept when recording)
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "hosts1_host_gone.json").write_text(history.to_json())


async def test_a_worker_with_another_log_store_is_warned_at_start(scene: Scene) -> None:
    shared = scene.host("a")
    shared.start()
    kk = await scene.katkit()
    await eventually(kk.worker_polling, timeout=60)
    lone = scene.host("c", extra_env={"KATKIT_LOG_DIR": str(scene.root / "logs-of-c")})
    lone.start()
    await eventually(lambda: "worker started" in (lone.home / "worker.log").read_text(), timeout=60)
    text = (lone.home / "worker.log").read_text()
    assert "another worker host polls this task queue with another log store" in text, text
    assert "another log store" not in (shared.home / "worker.log").read_text()


async def test_a_busy_host_keeps_its_shards(client, settings, config, repo: Path) -> None:
    """More shards than the host has slots wait longer than host_wait: the host answers its ping, so they stay."""
    import json
    from datetime import timedelta

    from katkit.sample import commit_files
    from starter.api import Katkit
    from tests.conftest import in_process_worker

    config.tenant("d-taskrunner").host_wait = timedelta(seconds=2)
    cfg = [{"EnvName": "default", "WorkFlow": [{"Name": "SLOW", "PhaseType": 4, "Order": 1, "Parallelism": 3}]}]
    sha = commit_files(repo, {"ci.sh": "#!/usr/bin/env bash\necho start $KATKIT_SHARD_INDEX; sleep 4\n",
                              "katkitconfig.js": json.dumps(cfg), "servicedescription/servicedescription.js": None})
    kk = Katkit(client, settings, config)
    async with in_process_worker(client, settings, threads=2):  # one slot for shards on this host
        st = await kk.wait((await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="chaos")).run_id)
        logs = {label: data.decode() async for label, data in kk.follow_logs(st.run_id)}
    assert [(s.generation, s.host, s.exit_code) for s in st.phases[0].shards] == [(0, settings.host_queue, 0)] * 3
    assert all("did not come back" not in text and text.count("running ci.sh") == 1 for text in logs.values()), logs
