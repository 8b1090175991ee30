"""Time from ``katkit cancel`` to a running builder being gone, side by side with the old heartbeat throttle.

A cancel reaches an activity only in the server's answer to one of its heartbeats, so the worker's heartbeat
throttle bounds it. In one run: ``--runs`` runs whose ci.sh sleeps are each cancelled once ci.sh has started,
first with katkit's throttle (worker.HEARTBEAT_THROTTLE), then with the SDK's default for a 10 s heartbeat
timeout (8 s, the baseline); the time from the cancel request to the builder's agent process being gone
(target p95 <= 5 s).

    ./dev.sh bench            (or: python bench/bench_cancel.py --runs 10)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import worker  # noqa: E402
from bench.harness import katkit_on_dev_server, pct  # noqa: E402
from katkit.log import configure_logging  # noqa: E402
from katkit.sample import commit_files  # noqa: E402
from starter.api import Katkit  # noqa: E402

TARGET_P95_S = 5.0
BASELINE_THROTTLE = timedelta(seconds=8)  # the SDK's throttle for a 10 s heartbeat timeout: 80% of it


def _agents(home: Path) -> list[int]:
    pids = []
    for d in (home / "builders").glob("*/pid"):
        try:
            pid = int(d.read_text())
            os.kill(pid, 0)
            pids.append(pid)
        except (OSError, ValueError):
            pass
    return pids


async def one_cancel(kk: Katkit, repo: Path, i: int) -> float:
    sha = commit_files(repo, {"ci.sh": f"echo started {i}; sleep 300\n"})
    handle = await kk.start_run("d-bench", "r", sha=sha, by="bench")
    home = kk.settings.home
    while not any(b"started" in p.read_bytes() for p in (home / "builders").glob("*/log")):
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.5)  # well into the phase: the first heartbeats have gone out
    began = time.monotonic()
    await kk.cancel(handle.run_id)
    while _agents(home):
        await asyncio.sleep(0.01)
    took = time.monotonic() - began
    while (await kk.status(handle.run_id)).status != "cancelled":
        await asyncio.sleep(0.05)
    return took


async def measure(runs: int, throttle: timedelta) -> list[float]:
    worker.HEARTBEAT_THROTTLE = throttle
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-cancel-"))
    repo = work / "repo"
    commit_files(repo, {"ci.sh": "true\n"})
    config = f"tenants: [{{name: d-bench, env: DEV}}]\nlinks: [{{repo: r, url: {repo}, tenants: [d-bench]}}]\n"
    async with katkit_on_dev_server(work, config) as kk:
        return [await one_cancel(kk, repo, i) for i in range(runs)]


async def main(runs: int) -> None:
    configure_logging("WARNING")
    ours = worker.HEARTBEAT_THROTTLE
    now = await measure(runs, ours)
    before = await measure(runs, BASELINE_THROTTLE)
    print(f"katkit bench: cancel -> running builder gone, {runs} cancels each (local builder)")
    print(f"  heartbeat throttle {ours.total_seconds():.0f} s (katkit)     p50 {pct(now, 50):5.2f} s   p95 {pct(now, 95):5.2f} s"
          f"   (target p95 <= {TARGET_P95_S:.0f} s: {'met' if pct(now, 95) <= TARGET_P95_S else 'NOT met'})")
    print(f"  heartbeat throttle {BASELINE_THROTTLE.total_seconds():.0f} s (SDK default) p50 {pct(before, 50):5.2f} s   "
          f"p95 {pct(before, 95):5.2f} s   (baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
