"""Time from the approval signal being accepted to the deploy activity starting, over 20 gated runs.

In one run: 20 runs of a deploy-only pipeline wait at a PROD gate; each is approved with the ``approve``
signal (as the web UI sends it). From each run's history: the signal's event time to the deploy
activity's start (target p50 <= 50 ms). Because the deploy activity takes the tenant service's deploy
lock before it deploys, the time from the signal to the deploy itself beginning (lock held) is printed
beside it.

    ./dev.sh bench            (or: python bench/bench_gate.py --runs 20)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import EventType  # noqa: E402

from bench.harness import katkit_on_dev_server, pct  # noqa: E402
from katkit.log import configure_logging  # noqa: E402
from katkit.models import RunStatus  # noqa: E402
from katkit.sample import commit_files  # noqa: E402
from starter.api import Katkit  # noqa: E402

TARGET_MS = 50.0


async def one_run(kk: Katkit, repo: Path, i: int) -> tuple[float, float]:
    sha = commit_files(repo, {"n.txt": str(i)})
    handle = await kk.start_run("p-bench", "r", sha=sha, by="bench")
    wf = kk.client.get_workflow_handle(handle.run_id, result_type=RunStatus)
    while (await kk.status(handle.run_id)).status != "awaiting_approval":
        await asyncio.sleep(0.05)
    await wf.signal("approve", {"by": "alice", "comment": "bench"})
    st = await wf.result()
    signaled = started = None
    async for e in wf.fetch_history_events():
        t = e.event_time.ToDatetime().timestamp()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = t
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and signaled and started is None:
            scheduled_deploy = e.activity_task_scheduled_event_attributes.activity_type.name == "deploy"
            started = t if scheduled_deploy else None
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and started is not None and signaled:
            started = t  # the deploy's own start (the eager dispatch makes it the same moment or just after)
            break
    assert signaled and started and st.deployed and st.deployed.started_at
    return (started - signaled) * 1000, (st.deployed.started_at.timestamp() - signaled) * 1000


async def main(runs: int) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="katkit-bench-gate-"))
    repo = work / "repo"
    config = [{"EnvName": "default", "WorkFlow": [{"Name": "DEPLOY", "PhaseType": 1, "Order": 1}]}]
    commit_files(repo, {"katkitconfig.js": json.dumps(config),
                        "servicedescription/servicedescription.js": json.dumps({"Name": "app", "DockerImage": "app:<hubtag>"})})
    tenants = ("tenants: [{name: p-bench, env: PROD, approval: {required: true, approvers: [alice]}}]\n"
               f"links: [{{repo: r, url: {repo}, tenants: [p-bench]}}]\n")
    async with katkit_on_dev_server(work, tenants) as kk:
        await one_run(kk, repo, -1)  # warm-up
        results = [await one_run(kk, repo, i) for i in range(runs)]
    to_activity = [r[0] for r in results]
    to_deploy = [r[1] for r in results]
    print(f"katkit bench: approval signal -> deploy, {runs} gated runs (local platform)")
    print(f"  signal accepted -> deploy activity starts   p50 {pct(to_activity, 50):6.1f} ms   p95 {pct(to_activity, 95):6.1f} ms"
          f"   (target p50 <= {TARGET_MS:.0f} ms: {'met' if pct(to_activity, 50) <= TARGET_MS else 'NOT met'})")
    print(f"  signal accepted -> deploy begins (lock held) p50 {pct(to_deploy, 50):6.1f} ms   p95 {pct(to_deploy, 95):6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
