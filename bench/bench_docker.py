"""The Docker builder against a bare ``docker run --rm`` of the same image and script, and the worker's memory
while a phase streams a large log.

In one run: 20 bare ``docker run --rm`` of the builder image running a no-op ci.sh (the floor; ten before
and ten after the pipeline, so drift of a busy 2-core machine weighs on both sides), and a 10-phase
no-op pipeline on the Docker builder through Temporal; prints the ratio (target <= 1.10x).
Then one phase streams 10 MB and one 100 MB of log; prints the worker's peak RSS after each (target:
flat, no growth with log size).

    ./dev.sh bench            (or: python bench/bench_docker.py --runs 3)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import katkit_on_dev_server, noop_pipeline, pct, run_commit  # noqa: E402
from katkit.builders.docker import NO_IPV6  # noqa: E402
from katkit.gitrepo import RepoMirror  # noqa: E402
from katkit.log import configure_logging  # noqa: E402
from katkit.sample import commit_files  # noqa: E402

PHASES = 10
IMAGE = "katkit-builder:latest"
TARGET_RATIO = 1.10


def bare_runs(mirror: Path, sha: str, n: int) -> list[float]:
    spec = json.dumps({"repo_url": "/katkit/mirror", "sha": sha, "folder": "", "workspace": "/workspace/src"})
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{mirror}:/katkit/mirror:ro",
                        "-e", "KATKIT_PHASE=BARE", IMAGE, "--spec-json", spec], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def bare_api_runs(mirror: Path, sha: str, n: int) -> list[float]:
    """The container katkit makes for a builder on the network ``none`` (the engine's networking disabled, its agent
    naming localhost: README, Docker), made bare: created, started, waited for and removed through the engine's API,
    one after the other, nothing prepared ahead. Against it, a phase shows what pipelining alone gains."""
    import docker

    api = docker.from_env(version="auto").api
    spec = json.dumps({"repo_url": "/katkit/mirror", "sha": sha, "folder": "", "workspace": "/workspace/src",
                       "hosts": True})
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        made = api.create_container(IMAGE, command=["--spec-json", spec], environment={"KATKIT_PHASE": "BARE"},
                                    network_disabled=True, host_config=api.create_host_config(
                                        binds={str(mirror): {"bind": "/katkit/mirror", "mode": "ro"}},
                                        network_mode="none", sysctls=NO_IPV6))
        try:
            api.start(made)
            code = api.wait(made)["StatusCode"]
            api.logs(made)
        finally:
            api.remove_container(made, force=True, v=True)
        times.append(time.perf_counter() - t0)
        assert code == 0, code
    return times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(runs: int) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-docker-"))
    repo = work / "repo"
    noop = noop_pipeline(PHASES)
    sha = commit_files(repo, noop)
    mirror = RepoMirror(work / "home" / "git")
    mirror.resolve(str(repo), sha=sha)
    bare = bare_runs(mirror.mirror_path(str(repo)), sha, 10)  # half of the floor now, half after: drift hits both
    tenants = (f"tenants: [{{name: bench, env: DEV, builder: docker, docker: {{builder_network: none}}}}]\n"
               f"links: [{{repo: r, url: {repo}, tenants: [bench]}}]\n")
    phase_s: list[float] = []
    async with katkit_on_dev_server(work, tenants) as kk:
        for r in range(runs + 1):  # the first run warms up
            st = await run_commit(kk, "bench", repo, {**noop, "run.txt": str(r)})
            if r:
                phase_s += [(p.ended_at - p.started_at).total_seconds() for p in st.phases]
        one = json.dumps([{"EnvName": "default", "WorkFlow": [{"Name": "LOG", "PhaseType": 4, "Order": 1}]}])
        bare += bare_runs(mirror.mirror_path(str(repo)), sha, 10)
        rss = {"before": peak_rss_mb()}
        for mb in (10, 100):
            ci = f"yes 'katkit log line padded to a hundred bytes .......................................................' | head -c {mb}000000\n"
            st = await run_commit(kk, "bench", repo, {"ci.sh": ci, "katkitconfig.js": one})
            size = kk.log_store.size(st.phases[0].shards[0].log_key)
            rss[f"{mb} MB"] = peak_rss_mb()
            assert size >= mb * 1_000_000, size
    floor, ours = statistics.median(bare), pct(phase_s, 50)
    print(f"katkit bench: {PHASES}-phase no-op pipeline on the Docker builder, {runs} runs ({len(phase_s)} phases)")
    print(f"  bare docker run --rm (20 runs)  p50 {floor * 1000:7.1f} ms   p95 {pct(bare, 95) * 1000:7.1f} ms")
    print(f"  phase through CommitRun         p50 {ours * 1000:7.1f} ms   p95 {pct(phase_s, 95) * 1000:7.1f} ms")
    print(f"  ratio                           p50 {ours / floor:7.2f}x      (target <= {TARGET_RATIO:.2f}x: "
          f"{'met' if ours / floor <= TARGET_RATIO else 'NOT met'})")
    print(f"  worker peak RSS: before logs {rss['before']:.0f} MB, after a 10 MB log {rss['10 MB']:.0f} MB, "
          f"after a 100 MB log {rss['100 MB']:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    asyncio.run(main(parser.parse_args().runs))
