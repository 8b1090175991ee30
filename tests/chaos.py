"""Chaos for real: a file-backed Temporal dev server killed with SIGKILL and started again on the same state
file, worker processes killed or frozen with real signals. Used by tests/test_chaos.py and ``./dev.sh chaos``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from katkit.config import Settings, parse_config
from katkit.sample import SAMPLE_CONFIG_YAML, commit_files
from katkit.temporal import connect, free_port, start_dev_server
from starter.api import Katkit

ROOT = Path(__file__).resolve().parent.parent

CHAOS_CI = """#!/usr/bin/env bash
set -u
echo "$KATKIT_PHASE $KATKIT_SHARD_INDEX $$" >> "$MARKERS/starts"
if [ "$KATKIT_PHASE" = SLOW ]; then
  for i in $(seq 1 "$LINES"); do echo "line $i"; sleep "$PAUSE"; done
fi
echo "$KATKIT_PHASE done"
"""



class DevServer:
    """The embedded dev server on a port of its own, its state in ``home/temporal.db``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port, self.ui_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_dev_server(self.home, port=self.port, ui_port=self.ui_port)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class Host:
    """One worker host: a katkit home of its own and a worker process on the shared task queue."""

    def __init__(self, name: str, home: Path, settings: Settings, log_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name, self.home, self.settings = name, home, settings
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        env = {**os.environ, "KATKIT_HOME": str(self.home), "KATKIT_ADDRESS": self.settings.address,
               "KATKIT_NAMESPACE": self.settings.namespace, "KATKIT_TASK_QUEUE": self.settings.task_queue,
               **({"KATKIT_LOG_DIR": str(self.log_dir)} if self.log_dir else {}), **self.extra_env}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
                                     stdout=open(self.home / "worker.log", "ab"), stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Scene:
    """A dev server, a sample repository whose SLOW phase prints numbered lines, and a starter connected to it."""

    def __init__(self, root: Path, *, lines: int = 40, pause: float = 0.5, shards: int = 2, builder: str = "local") -> None:
        self.root = root
        self.server = DevServer(root / "server")
        self.repo = root / "taskrunner"
        self.markers = root / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"  # one log store for every host (what several hosts need)
        self.lines = lines
        config = [{"EnvName": "default", "WorkFlow": [
            {"Name": "BUILD", "PhaseType": 4, "BuildParams": f"MARKERS={self.markers}", "Order": 1, "Parallelism": 1},
            {"Name": "SLOW", "PhaseType": 4, "BuildParams": f"MARKERS={self.markers}, LINES={lines}, PAUSE={pause}",
             "Order": 2, "Parallelism": shards},
            {"Name": "DEPLOY", "PhaseType": 1, "Order": 3},
        ]}]
        commit_files(self.repo, {"ci.sh": CHAOS_CI, "katkitconfig.js": json.dumps(config),
                                 "servicedescription/servicedescription.js": '{"Name": "taskrunner", "DockerImage": "taskrunner:<hubtag>"}'})
        self.sha = subprocess.run(["git", "-C", str(self.repo), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, check=True).stdout.strip()
        yaml = SAMPLE_CONFIG_YAML.format(url=self.repo)
        if builder == "docker":  # d-taskrunner's builders are containers (no network: the mirror is mounted)
            yaml = yaml.replace("    builder: local\n", "    builder: docker\n    docker: {builder_network: none, "
                                "tenant_network: none}\n", 1)
        self.config = parse_config(yaml)
        self.settings = Settings(home=root / "starter", address=self.server.address, namespace="default",
                                 task_queue=f"katkit-chaos-{uuid.uuid4().hex[:8]}", log_dir=self.logs)
        self.hosts: list[Host] = []

    def host(self, name: str, **kwargs) -> Host:
        h = Host(name, self.root / f"host-{name}", self.settings, log_dir=self.logs, **kwargs)
        self.hosts.append(h)
        return h

    async def katkit(self) -> Katkit:
        return Katkit(await connect(self.settings), self.settings, self.config)

    def starts(self) -> list[str]:
        path = self.markers / "starts"
        return [" ".join(line.split()[:2]) for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
        self.server.stop()


async def eventually(predicate, timeout: float, interval: float = 0.25):
    """Poll ``predicate`` (sync or async) until truthy, tolerating a server that is down meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
        except Exception:  # noqa: BLE001 - the server may be down or restarting
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def slow_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("line ")]


def processes_in(path: Path) -> list[int]:
    """Pids whose command line or working directory is under ``path`` (what a builder leaves running)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (str(path).encode() in cmdline or cwd.startswith(str(path))):
            found.append(int(proc.name))
    return found
