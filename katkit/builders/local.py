"""The ``local`` builder: the agent as a detached process on the worker host (for trying katkit; not isolation).

Each builder is a state directory ``<root>/<name>/`` holding ``spec.json``, ``pid``, ``log`` and, once ci.sh
has exited, ``exit.json``. The agent runs in its own session, so a worker that dies leaves it running and
a restarted worker re-attaches by name: it reads the same log and exit status instead of starting again.
A removed builder's directory moves aside at once and is deleted by a background thread, so deleting a
workspace never holds up the phase. A builder prepared in advance also has ``go``, a FIFO its agent listens on
until ``start`` writes ci.sh's environment there, and ``started`` once the agent has read it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from katkit import agent
from katkit.builders import PREPARED_LABEL, BuilderSpec, BuilderState
from katkit.errors import InfraError
from katkit.gitrepo import is_remote
from katkit.names import inside

STOP_GRACE_S = 10.0
"""How long ci.sh and its children have between SIGTERM and SIGKILL (``KATKIT_STOP_GRACE`` seconds)."""


def stop_grace() -> float:
    """``KATKIT_STOP_GRACE``, as the worker checked it at start (Settings.stop_grace); the default if unreadable."""
    try:
        return min(max(float(os.environ.get("KATKIT_STOP_GRACE", STOP_GRACE_S)), 0.0), 600.0)
    except ValueError:
        return STOP_GRACE_S
START_GRACE_S = 10.0
_BASE_ENV_KEYS = ("PATH", "LANG")  # the contract: ci.sh sees these of the host, nothing else


class _Sweeper:
    """One background thread that empties trash directories (also what a worker that died left there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirs: set[Path] = set()
        self._thread: threading.Thread | None = None

    def sweep(self, trash: Path) -> None:
        with self._lock:
            self._dirs.add(trash)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="katkit-local-sweeper", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._dirs:
                    self._wake.wait()
                dirs, self._dirs = self._dirs, set()
            for trash in dirs:
                for entry in list(trash.iterdir()) if trash.is_dir() else []:
                    shutil.rmtree(entry, ignore_errors=True)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _private_dir(d: Path) -> None:
    """A builder's directory, 0700 whatever the umask: its raw log (before masking) is for the worker only."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.chmod(0o700)


_sweeper = _Sweeper()
_children: dict[int, subprocess.Popen[bytes]] = {}  # agents this worker started and has not removed yet


class LocalBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_tenant(cls, tenant: object, home: Path) -> LocalBuilder:
        return cls(home / "builders")

    @classmethod
    def on_this_host(cls, home: Path) -> list[LocalBuilder]:
        return [cls(home / "builders")]

    def _dir(self, name: str) -> Path:
        return inside(self.root, name)

    def _body(self, spec: BuilderSpec, d: Path) -> dict[str, Any]:
        """The agent's spec.json: never ci.sh's environment (secrets among it), which the agent gets as its own."""
        body = spec.model_dump(mode="json", exclude={"env"}) | {"workspace": str(d / "workspace")}
        if spec.mirror_path and is_remote(spec.repo_url):  # same host: clone the worker's mirror, no credentials
            body["repo_url"] = spec.mirror_path
        if spec.cache_scope and spec.cache_paths:  # $KATKIT_HOME/cache/<tenant>/<repo>/<branch>/
            body["cache"] = {"dir": str(inside(self.root.parent / "cache", spec.cache_scope)),
                             "paths": spec.cache_paths, "save": spec.cache_save}
        return body

    def _env(self, spec: BuilderSpec, d: Path) -> dict[str, str]:
        """ci.sh's environment: PATH and LANG of the host, HOME in the builder, then the spec's."""
        return {**{k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}, "HOME": str(d), **spec.env}

    def _write_spec(self, d: Path, body: dict[str, Any]) -> None:
        (d / "spec.json.tmp").write_text(json.dumps(body))
        os.replace(d / "spec.json.tmp", d / "spec.json")

    def _spawn(self, spec: BuilderSpec, d: Path, env: dict[str, str]) -> None:
        """Start the agent on ``d``: in a session of its own, so it outlives this worker and killing its group stops
        ci.sh; with ``env`` as its environment (ci.sh's own, not the worker's: no tokens, no cloud keys)."""
        (d / "log").touch()  # there as soon as the pid is
        try:
            proc = subprocess.Popen(agent.command(d), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, cwd=d, env=env)
        except OSError as exc:
            raise InfraError(f"local builder {spec.name} did not start: {exc}") from exc
        _children[proc.pid] = proc
        (d / "pid.tmp").write_text(str(proc.pid))
        os.replace(d / "pid.tmp", d / "pid")

    def prepare(self, spec: BuilderSpec) -> None:
        """The builder's directory and its agent, which checks out the sha and then waits on the FIFO ``go`` (up to
        ``spec.ready_for_s``) for ci.sh's environment: ``start`` writes it there. spec.json carries the labels (the
        reaper sees it) and ``katkit.prepared``; no env is written and the agent's own holds none of the spec's."""
        with self._locked(spec.name):
            d = self._dir(spec.name)
            if (d / "pid").exists() or (d / "exit.json").exists() or (d / "spec.json").exists():
                return  # prepared already, or started: a prepare that comes late changes nothing
            if not (d / "go").exists():
                os.mkfifo(d / "go", 0o600)
            body = self._body(spec, d) | {"go": {"from": str(d / "go"), "timeout": spec.ready_for_s}}
            body["labels"] = {**spec.labels, PREPARED_LABEL: "1"}
            self._write_spec(d, body)
            self._spawn(spec, d, self._env(spec.model_copy(update={"env": {}}), d))

    def _tell_to_start(self, spec: BuilderSpec, d: Path) -> bool | None:
        """Start ci.sh in a builder prepared in advance: write its environment to the agent's FIFO. True when this
        call told it; False when it had been told already (re-attach); None when it never will be: made anew."""
        pid = self._pid(spec.name)
        if pid is None or not self._alive(spec.name, pid):
            return None
        deadline = time.monotonic() + START_GRACE_S
        while True:  # the agent opens its FIFO first thing: until then a write would be lost
            if (d / "started").exists():
                return False  # told by another attempt (it stopped listening then)
            try:
                fd = os.open(d / "go", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline or not self._alive(spec.name, pid):
                    return None
                time.sleep(0.005)
        try:
            os.set_blocking(fd, True)  # a large environment is written whole as the agent reads it
            data = json.dumps({"env": self._env(spec, d)}).encode() + b"\n"
            while data:
                data = data[os.write(fd, data):]
        except BrokenPipeError:  # it stopped listening meanwhile: told by another attempt, or gone
            return False if (d / "started").exists() else None
        finally:
            os.close(fd)
        return True

    def _tell_or_remake(self, spec: BuilderSpec, d: Path) -> bool | None:
        """A prepared builder: tell it (True), re-attach (False), or remove it, ci.sh never having run there, and
        answer None: the caller makes it anew. One caller at a time per builder (``_locked``)."""
        if not (d / "exit.json").exists():
            told = self._tell_to_start(spec, d)
            if told is not None:
                return told
        try:
            if json.loads((d / "exit.json").read_text()).get("started", True):
                return False  # it ran ci.sh and ended: re-attach
        except (OSError, ValueError):
            pass
        if (d / "started").exists():
            return False  # told: never removed here, whatever happened since (the run removes it)
        self._remove_now(spec.name)  # never told in time, or killed while it waited: ci.sh never ran there
        return None

    @contextlib.contextmanager
    def _locked(self, name: str, make: bool = True) -> Iterator[Path]:
        """Hold the builder's lock (``<root>.locks/<name>``, beside the builders: a directory moves to the trash when
        removed) against a prepare, start or remove of it in another thread or worker process (an attempt that timed
        out may still run); yield the lock file. ``make``: make the builder's directory (0700) first."""
        locks = self.root.with_name(f"{self.root.name}.locks")
        locks.mkdir(parents=True, exist_ok=True)
        path = inside(locks, name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # still the lock: a remove that held it before us did not unlink it
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            if make:
                _private_dir(self._dir(name))
            yield path
        finally:
            os.close(fd)

    def start(self, spec: BuilderSpec) -> bool:
        with self._locked(spec.name):
            d = self._dir(spec.name)
            if (d / "go").exists():  # prepared in advance: its agent waits to be told
                told = self._tell_or_remake(spec, d)
                if told is not None:
                    return told
                _private_dir(d)  # removed (moved to the trash): made anew below, in a fresh directory
            if (d / "pid").exists() or (d / "exit.json").exists():
                return False
            # ci.sh's environment (secrets among it) reaches the agent as its process environment, never a file
            body = self._body(spec, d)
            prepared = (d / "prepared").exists() and (d / "workspace").is_dir()  # by a worker from before agents waited
            if prepared:
                body["checked_out"] = True  # prepared while the phase before ran: the agent starts ci.sh at once
            self._write_spec(d, body)  # a workspace a crashed start left is emptied by the agent before it clones
            self._spawn(spec, d, self._env(spec, d))
            return True

    def _pid(self, name: str) -> int | None:
        try:
            return int((self._dir(name) / "pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, name: str, pid: int) -> bool:
        """The pid is alive and still our agent (not a reused pid)."""
        if pid in _children:  # started by this worker (its cmdline may read empty while it execs)
            return _children[pid].poll() is None
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

    def _stop(self, name: str, pid: int | None, progress: Callable[[], None]) -> None:
        """SIGTERM the builder's whole process group, then SIGKILL what is left after the grace period, whether
        or not the agent (the group's leader) still lives: a ci.sh that traps or ignores TERM goes too.
        ``progress`` is called about once a second meanwhile (the activity heartbeats: a grace may be long)."""
        if pid is None:
            return
        if pid in _children:
            _children[pid].poll()  # reap our own agent: its zombie would keep the group there
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return  # nothing of the builder left (the common end: no scan of /proc)
        except PermissionError:
            pass  # another user's group by now: the checks below leave it alone
        if not self._alive(name, pid) and pid in _group_members(pid):
            return  # the pid leads another group now: that group is not ours (Linux never reuses a live group's id)
        for sig, wait in ((signal.SIGTERM, stop_grace()), (signal.SIGKILL, 5.0)):
            if not _group_members(pid):
                return
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = last = time.monotonic()
            deadline += wait
            while time.monotonic() < deadline and _group_members(pid):
                if pid in _children:
                    _children[pid].poll()  # reap our own agent, so it does not linger as a zombie
                if time.monotonic() - last >= 1.0:
                    progress()
                    last = time.monotonic()
                time.sleep(0.05)

    def remove(self, name: str, progress: Callable[[], None] = lambda: None) -> None:
        """Stop the agent; the builder is gone as soon as its directory moves to the trash (deleted in the background).
        Locked against a prepare or start of the same builder (``_locked``), whose lock goes with it."""
        with self._locked(name, make=False) as lock:
            self._remove_now(name, progress)
            lock.unlink(missing_ok=True)  # holders that opened it before see it is no longer the lock, and look again

    def _remove_now(self, name: str, progress: Callable[[], None] = lambda: None) -> None:
        pid = self._pid(name)
        self._stop(name, pid, progress)
        if pid is not None and (proc := _children.pop(pid, None)) is not None:
            proc.poll()  # reaped; one that somehow lives on is reaped by subprocess once it exits
        trash = self.root.with_name(f"{self.root.name}.removed")  # deleted from there off the phase's critical path
        trash.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self._dir(name), trash / f"{name}-{uuid.uuid4().hex[:8]}")
        except FileNotFoundError:
            return
        _sweeper.sweep(trash)

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
