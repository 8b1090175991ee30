"""The ``local`` builder: the agent as a detached process on the worker host (for trying katkit; not isolation).

Each builder is a state directory ``<root>/<name>/`` holding ``spec.json``, ``pid``, ``log`` and, once ci.sh
has exited, ``exit.json``. The agent runs in its own session, so a worker that dies leaves it running and
a restarted worker re-attaches by name: it reads the same log and exit status instead of starting again.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from katkit import agent
from katkit.builders import BuilderSpec, BuilderState
from katkit.errors import InfraError

STOP_GRACE_S = 5.0
START_GRACE_S = 10.0
_BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ")


class LocalBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, name: str) -> Path:
        return self.root / name

    def start(self, spec: BuilderSpec) -> bool:
        d = self._dir(spec.name)
        if (d / "pid").exists() or (d / "exit.json").exists():
            return False
        d.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
        env.update(HOME=str(d), **spec.env)
        body = spec.model_dump(mode="json", exclude={"env"}) | {"env": env, "workspace": str(d / "workspace")}
        (d / "spec.json.tmp").write_text(json.dumps(body))
        os.replace(d / "spec.json.tmp", d / "spec.json")
        if (d / "workspace").exists():  # a start that crashed half-way: begin clean
            shutil.rmtree(d / "workspace")
        proc = subprocess.run(
            [sys.executable, agent.__file__, "--detach", str(d)],
            stdin=subprocess.DEVNULL, capture_output=True, check=False, close_fds=True,
        )
        if proc.returncode != 0 or not (d / "pid").exists():
            raise InfraError(f"local builder {spec.name} did not start: {proc.stderr.decode(errors='replace').strip()}")
        return True

    def _pid(self, name: str) -> int | None:
        try:
            return int((self._dir(name) / "pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, name: str, pid: int) -> bool:
        """The pid is alive and still our agent (not a reused pid)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return str(self._dir(name)).encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"

    def state(self, name: str) -> BuilderState:
        d = self._dir(name)
        try:
            result = json.loads((d / "exit.json").read_text())
            return BuilderState(running=False, exit_code=int(result["exit_code"]), reason=result.get("reason", ""))
        except FileNotFoundError:
            pass
        pid = self._pid(name)
        if pid is not None and self._alive(name, pid):
            return BuilderState(running=True)
        if not d.exists():
            return BuilderState(running=False, reason=f"builder {name} does not exist (removed?)")
        if pid is None and time.time() - d.stat().st_mtime < START_GRACE_S:
            return BuilderState(running=True)
        if (d / "exit.json").exists():  # finished between the two looks
            return self.state(name)
        return BuilderState(running=False, reason="the builder process was killed before ci.sh finished")

    def wait(self, name: str, timeout: float) -> None:
        """Wake as soon as the agent exits (a pidfd turns readable), or after ``timeout``."""
        pid = self._pid(name)
        if pid is None or not hasattr(os, "pidfd_open"):
            time.sleep(timeout)
            return
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)

    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        try:
            with open(self._dir(name) / "log", "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def _stop(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None or not self._alive(name, pid):
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self._alive(name, pid):
                    return
                time.sleep(0.05)

    def remove(self, name: str) -> None:
        self._stop(name)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def list(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                try:
                    found[d.name] = json.loads((d / "spec.json").read_text()).get("labels", {})
                except (OSError, ValueError):
                    found[d.name] = {}
        return found

    def check_image(self, image: str | None) -> None:
        """The local builder runs on the worker host: a phase's ContinerImage does not apply and is ignored."""
