"""Scale: N runs started at once across 20 tenants, each run a build phase and a deploy, on one worker against a
file-backed dev server.

Checks that every run succeeds (none lost), that no builder is left, and that no two deploys of one tenant's service
overlapped (each deploy's lock-held interval, from its result); prints wall time, runs/s, p50/p95 run latency (start
to result), the longest deploy lock wait and the process's peak RSS (worker and starter share the process; target
<= 300 MB).

    python bench/bench_load.py [--runs 500] [--tenants 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import katkit_on_dev_server, pct  # noqa: E402
from katkit.log import configure_logging  # noqa: E402
from katkit.models import RunStatus  # noqa: E402
from katkit.sample import commit_files  # noqa: E402

TARGET_RSS_MB = 300.0
PIPELINE = json.dumps([{"EnvName": "default", "WorkFlow": [
    {"Name": "BUILD", "PhaseType": 4, "Order": 1, "Parallelism": 1},
    {"Name": "DEPLOY", "PhaseType": 1, "Order": 2, "Parallelism": 1}]}])
SERVICE = json.dumps({"Name": "app", "DockerImage": "app:<hubtag>"})


async def main(runs: int, tenants: int) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-load-"))
    repo = work / "repo"
    names = [f"load-{i:02d}" for i in range(tenants)]
    per_tenant = -(-runs // tenants)
    shas = [commit_files(repo, {"ci.sh": "true\n", "katkitconfig.js": PIPELINE,
                                "servicedescription/servicedescription.js": SERVICE, "n": str(n)})
            for n in range(per_tenant)]
    config = ("tenants:\n" + "".join(f"  - {{name: {t}, env: DEV}}\n" for t in names)
              + f"links: [{{repo: r, url: {repo}, tenants: [{', '.join(names)}]}}]\n")
    jobs = [(names[i % tenants], shas[i // tenants]) for i in range(runs)]
    load = os.getloadavg()
    async with katkit_on_dev_server(work, config) as kk:
        started: dict[str, float] = {}
        latency: dict[str, float] = {}

        async def one(tenant: str, sha: str) -> RunStatus:
            t0 = time.perf_counter()
            handle = await kk.start_run(tenant, "r", sha=sha, by="bench")
            started[handle.run_id] = t0
            st = await kk.client.get_workflow_handle(handle.run_id, result_type=RunStatus).result()
            latency[handle.run_id] = time.perf_counter() - t0
            return st

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(t, s) for t, s in jobs), return_exceptions=True)
        wall = time.perf_counter() - t0
    failed = [r for r in results if not isinstance(r, RunStatus) or r.status != "succeeded"]
    statuses = [r for r in results if isinstance(r, RunStatus)]
    overlaps = 0
    for tenant in names:
        spans = sorted((r.deployed.started_at or r.deployed.deployed_at, r.deployed.deployed_at)
                       for r in statuses if r.tenant == tenant and r.deployed is not None)
        overlaps += sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    left = [p.name for p in (work / "home" / "builders").iterdir()] if (work / "home" / "builders").is_dir() else []
    waits = [r.deployed.lock_waited_s for r in statuses if r.deployed is not None]
    lat = list(latency.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"katkit bench: {runs} runs (build + deploy) started at once across {tenants} tenants, one worker, file-backed "
          f"dev server (load average before {load[0]:.2f}; {os.cpu_count()} cores)")
    print(f"  succeeded {len(statuses) - len([r for r in statuses if r.status != 'succeeded'])}/{runs}, failed or lost "
          f"{len(failed)}, builders left {len(left)}, overlapping deploys {overlaps}")
    print(f"  wall {wall:.1f} s, {runs / wall:.1f} runs/s, latency p50 {pct(lat, 50):.1f} s p95 {pct(lat, 95):.1f} s, "
          f"max lock wait {max(waits, default=0):.1f} s")
    print(f"  peak RSS (worker + starter, one process) {rss:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
          f"{'met' if rss <= TARGET_RSS_MB else 'NOT met'})")
    if failed:
        print(f"  first failure: {str(failed[0])[:300]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.tenants))
