"""Processes a katkit home leaves running (the Temporal dev server, the worker ``katkit demo`` hands over): each
has ``<home>/<name>.pid`` and ``<home>/<name>.log``, is found again by its pid *and* its command line (so a pid the
system has since given to another process is never taken for it, nor signalled) and stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CommandCheck = Callable[[list[str]], bool]
"""Whether a command line (argv) is the process a pid file names."""


def command_line(pid: int) -> list[str] | None:
    """The arguments of process ``pid``, or None when it does not run (a zombie has exited: None too)."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self/stat").is_file():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") or not raw else raw.decode(errors="replace").split("\0")[:-1]
    try:  # no /proc (macOS): ps gives the state and the arguments (split on blanks: enough to recognize them)
        out = subprocess.run(["ps", "-o", "stat=,args=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return None if not out or out[0].startswith("Z") else out[1:]


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value after ``option`` in ``argv`` (``--port 7233``), or None."""
    for i, arg in enumerate(argv[:-1]):
        if arg == option:
            return argv[i + 1]
    return None


class BackgroundProcess:
    """One process of a katkit home, known by its pid file, recognized by ``is_it``."""

    def __init__(self, home: Path, name: str, is_it: CommandCheck) -> None:
        self.home, self.name, self.is_it = home, name, is_it
        self.pid_file = home / f"{name}.pid"
        self.log_file = home / f"{name}.log"

    def pid(self) -> int | None:
        """The pid of the process while it runs; None when there is no pid file or another (or no) process has it."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        argv = command_line(pid)
        return pid if argv and self.is_it(argv) else None

    def start(self, cmd: list[str], *, env: dict[str, str] | None = None, detach: bool = True) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with its output appended to the log; ``detach``: in a session of its own, so it outlives
        this process and the terminal."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=detach, env=env)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def log_tail(self) -> str:
        """The last line of the log (what a process that exited at start said last)."""
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process, SIGKILL it when it still runs after ``grace`` s; remove the pid file.
        Returns the pid stopped, or None when it was not running."""
        pid = self.pid()
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if _gone_within(pid, wait):
                    break
        self.pid_file.unlink(missing_ok=True)
        return pid


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while command_line(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
