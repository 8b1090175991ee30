"""A cached build against a cold one: the same ci.sh, whose slow step (making an artefact) is skipped when the
tenant's cache brought the artefact back.

In one run, per builder (local, and Docker when an engine answers): a tenant with ``cache: [build]`` runs a
one-phase pipeline whose ci.sh derives a 4 MB artefact with PBKDF2 (a few seconds of CPU, no network) unless
``build/artefact.bin`` is there already. The first run is cold (the cache is empty), the next ones are warm
(restored before ci.sh, saved after). Prints the phase times and the ratio warm/cold (target: warm < cold).

    ./dev.sh bench            (or: python bench/bench_cache.py --warm 3)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import katkit_on_dev_server, run_commit  # noqa: E402
from katkit.log import configure_logging  # noqa: E402

ITERATIONS = 3_000_000
CI = f"""set -e
mkdir -p build
if [ -f build/artefact.bin ]; then echo "artefact from the cache"
else python3 -c 'import hashlib,sys; k=hashlib.pbkdf2_hmac("sha256", b"src", b"salt", {ITERATIONS}); \\
sys.stdout.buffer.write(k * (1 << 17))' > build/artefact.bin; echo "artefact built"; fi
sha256sum build/artefact.bin
"""
PIPELINE = json.dumps([{"EnvName": "default", "WorkFlow": [{"Name": "BUILD", "PhaseType": 4, "Order": 1,
                                                             "Parallelism": 1}]}])


def remove_bench_volumes() -> None:
    """The bench's own Docker cache volume (an earlier bench run's would make the first run warm)."""
    out = subprocess.run(["docker", "volume", "ls", "-q", "--filter", "label=katkit.tenant=cache-docker"],
                         capture_output=True, text=True).stdout.split()
    if out:
        subprocess.run(["docker", "volume", "rm", "-f", *out], capture_output=True)


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


async def main(warm: int) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-cache-"))
    repo = work / "repo"
    builders = ["local"] + (["docker"] if docker_answers() else [])
    tenants = "".join(f"  - {{name: cache-{b}, env: DEV, builder: {b}, cache: [build], "
                      f"docker: {{builder_network: none, tenant_network: none}}}}\n" for b in builders)
    config = f"tenants:\n{tenants}links: [{{repo: r, url: {repo}, tenants: [{', '.join(f'cache-{b}' for b in builders)}]}}]\n"
    from katkit.sample import commit_files

    commit_files(repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE})
    if "docker" in builders:
        remove_bench_volumes()
    load = os.getloadavg()
    print(f"katkit bench: cache, a ci.sh that builds a 4 MB artefact unless cached; 1 cold + {warm} warm runs per builder"
          f" (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores)")
    try:
        async with katkit_on_dev_server(work, config) as kk:
            for b in builders:
                times = []
                for n in range(warm + 1):
                    st = await run_commit(kk, f"cache-{b}", repo, {"run.txt": f"{b}-{n}"})
                    assert st.status == "succeeded", st
                    times.append((st.phases[0].ended_at - st.phases[0].started_at).total_seconds())  # type: ignore[operator]
                cold, hot = times[0], statistics.median(times[1:])
                print(f"  {b:6} builder   cold {cold * 1000:7.0f} ms   warm p50 {hot * 1000:7.0f} ms   "
                      f"warm/cold {hot / cold:4.2f}x   (target < 1: {'met' if hot < cold else 'NOT met'})")
    finally:
        if "docker" in builders:
            remove_bench_volumes()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3)
    asyncio.run(main(parser.parse_args().warm))
