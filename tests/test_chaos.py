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

LONG = os.environ.get("KATKIT_CHAOS_LONG") == "1"


@pytest.fixture
def scene(tmp_path: Path):
    s = Scene(tmp_path)
    s.server.start()
    try:
        yield s
    finally:
        s.close()


async def _slow_shards_running(scene: Scene) -> bool:
    return sum(1 for s in scene.starts() if s.startswith("SLOW")) == 2 and all(
        b"line 3" in p.read_bytes() for p in (scene.logs).rglob("SLOW/*.log"))


async def assert_whole_run(scene: Scene, kk, run_id: str, timeout: float) -> None:
    st = await eventually(lambda: _ended(kk, run_id), timeout=timeout)
    assert st.status == "succeeded", st.error
    assert sorted(scene.starts()) == ["BUILD 0", "SLOW 0", "SLOW 1"]  # every ci.sh started exactly once
    for shard in (0, 1):
        [log] = scene.logs.rglob(f"SLOW/{shard}.log")
        text = log.read_text()
        assert slow_lines(text) == [f"line {i}" for i in range(1, scene.lines + 1)], text  # once each, in order
        assert "cancelled" not in text and text.count("[katkit-agent] running ci.sh") == 1, text
        assert "[katkit-agent] ci.sh exited 0 in" in text and text.count("SLOW done") == 1, text
    for host in scene.hosts:
        builders = host.home / "builders"
        assert not builders.exists() or not any(builders.iterdir()), list(builders.iterdir())
        assert processes_in(host.home) == []


async def _ended(kk, run_id: str):
    st = await kk.status(run_id)
    return st if st.status in ("succeeded", "failed", "cancelled", "rejected") else None


@pytest.mark.parametrize("outage_s", [15, 60] + ([300] if LONG else []))
async def test_server_killed_and_restarted_mid_phase(scene: Scene, outage_s: int) -> None:
    host = scene.host("a")
    host.start()
    kk = await scene.katkit()
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=scene.sha, by="chaos")
    await eventually(lambda: _slow_shards_running(scene), timeout=60)
    scene.server.kill()
    await asyncio.sleep(outage_s)
    scene.server.start()
    await assert_whole_run(scene, kk, handle.run_id, timeout=120 + outage_s)


@pytest.mark.parametrize("freeze_s", [15] + ([60] if LONG else []))
async def test_worker_frozen_mid_phase(scene: Scene, freeze_s: int) -> None:
    host = scene.host("a")
    host.start()
    kk = await scene.katkit()
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=scene.sha, by="chaos")
    await eventually(lambda: _slow_shards_running(scene), timeout=60)
    host.signal(signal.SIGSTOP)
    await asyncio.sleep(freeze_s)
    host.signal(signal.SIGCONT)
    await assert_whole_run(scene, kk, handle.run_id, timeout=120 + freeze_s)


TERM_TRAPS = {
    "ignores TERM": "trap '' TERM; echo trapped; sleep 3600",
    "traps TERM in a loop": "trap 'echo got TERM' TERM; echo trapped; while true; do sleep 0.2; done",
}


@pytest.mark.parametrize("how", ["cancel", "phase timeout"])
@pytest.mark.parametrize("trap", list(TERM_TRAPS))
async def test_a_ci_sh_that_traps_term_is_gone_within_the_grace(trap: str, how: str, client, settings, config, repo: Path,
                                                                home: Path, monkeypatch) -> None:
    from datetime import timedelta

    from katkit.errors import RunFailed
    from katkit.sample import commit_files
    from starter.api import Katkit
    from tests.conftest import in_process_worker, wait_for

    grace = 3.0
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
    assert gone_after <= grace + 2, f"ci.sh outlived the {grace} s grace by {gone_after - grace:.1f} s"
    assert not any((home / "builders").iterdir())
