"""A worker killed with SIGKILL mid-phase and started again: the run goes on exactly where it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from katkit.config import Settings
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import wait_for

CI = """#!/usr/bin/env bash
set -eu
echo "$KATKIT_PHASE" >> "$MARKERS/starts"
if [ "$KATKIT_PHASE" = SLOW ]; then
  for i in $(seq 1 30); do echo "line $i"; sleep 0.5; done
fi
echo "$KATKIT_PHASE done"
"""


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KATKIT_HOME": str(settings.home), "KATKIT_ADDRESS": settings.address,
           "KATKIT_NAMESPACE": settings.namespace, "KATKIT_TASK_QUEUE": settings.task_queue}
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, str(root / "worker.py")], env=env, cwd=root,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


async def test_sigkilled_worker_resumes_the_run_and_reattaches(kk: Katkit, settings: Settings, repo: Path, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    config = [{"EnvName": "default", "WorkFlow": [
        {"Name": "BUILD", "PhaseType": 4, "BuildParams": f"MARKERS={markers}", "Order": 1, "Parallelism": 1},
        {"Name": "SLOW", "PhaseType": 4, "BuildParams": f"MARKERS={markers}", "Order": 2, "Parallelism": 1},
        {"Name": "DEPLOY", "PhaseType": 1, "Order": 3},
    ]}]
    sha = commit_files(repo, {"ci.sh": CI, "katkitconfig.js": json.dumps(config)})
    first = start_worker(settings, tmp_path / "worker1.log")
    second = None
    try:
        handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
        builders = settings.home / "builders"
        slow_dir = await wait_for(lambda: next((d for d in builders.glob("*-slow-0-*") if (d / "pid").exists()), None))
        pid = int((slow_dir / "pid").read_text())
        await wait_for(lambda: b"line 4" in (slow_dir / "log").read_bytes())
        first.send_signal(signal.SIGKILL)
        first.wait()
        os.kill(pid, 0)  # the agent lives on without its worker
        second = start_worker(settings, tmp_path / "worker2.log")
        st = await kk.wait(handle.run_id, interval=0.5)
        assert st.status == "succeeded" and st.deployed is not None
        assert (markers / "starts").read_text().split() == ["BUILD", "SLOW"]  # nothing ran twice
        slow = st.phases[1].shards[0]
        assert slow.reattached and slow.exit_code == 0
        assert not st.phases[0].shards[0].reattached
        log = b"".join([d async for _, d in kk.follow_logs(handle.run_id, "SLOW")]).decode()
        lines = [line for line in log.splitlines() if line.startswith("line ")]
        assert lines == [f"line {i}" for i in range(1, 31)]  # whole: nothing lost, nothing doubled
        assert log.count("[katkit-agent] running ci.sh") == 1 and "SLOW done" in log
        assert not slow_dir.exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
