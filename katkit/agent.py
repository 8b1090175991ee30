#!/usr/bin/env python3
"""The builder agent: check out one commit into a fresh workspace and run its ci.sh. Standard library only.

It runs inside every builder (a local process, a container, an ECS task). Its spec is a JSON file::

    {"repo_url": "...", "sha": "<40 hex>", "folder": "", "script": "ci.sh", "workspace": "/path", "env": {...},
     "checked_out": false,   # true: the workspace holds the sha already (a builder prepared in advance)
     "go": {"from": "stdin" or "/path/of/a/fifo", "timeout": 3600},   # optional: prepared in advance (below)
     "hosts": false,         # true: name localhost in /etc/hosts first, unless a line does (networking disabled)
     "cache": {"dir": "/cache/of/this/tenant/repo/branch", "paths": ["node_modules", "~/.cache/pip"], "save": true}}

``cache`` (optional): each path (``~/x``: in HOME; else in the checkout's folder) is copied from ``dir`` before
ci.sh and, when ci.sh exits 0 and ``save`` is true, copied back after it.

``go`` (optional; pipelining): the agent checks out, says it is ready, then waits up to ``timeout`` seconds for one
line of JSON from ``from`` (its stdin, or a FIFO it keeps open read-write, so it never sees an end of file) before
it runs ci.sh: ``{"env": {...}}``, ci.sh's environment (secrets among it: they never reach a file or argument), laid
over the agent's own. Only the first such line counts (one sent twice is read once; a garbled one is skipped).
No line in time: it exits ``NOT_STARTED`` without running ci.sh (``exit.json`` says ``"started": false``). A
checkout that failed before the line came is tried again after it (the line may bring the GitHub token a private
repository needs).

``agent.py STATE_DIR`` reads ``STATE_DIR/spec.json`` and writes, in ``STATE_DIR``: ``log`` (ci.sh's stdout
and stderr with the agent's own lines), and at the end ``exit.json`` (exit code, times, reason), written
atomically, so a watcher that finds it knows the log is complete. ``command()`` is how builders start it.
``agent.py --spec-json JSON`` runs in the foreground with the log on stdout and ci.sh's environment taken
from the agent's own (containers: Docker sets the contract's variables).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

AGENT_FAILURE = 255  # the agent itself could not run ci.sh (checkout failed, no ci.sh)
NOT_STARTED = 254  # prepared in advance, never told to start (``go``): ci.sh did not run
READY_LINE = "ready: ci.sh starts when the phase before has ended"
SCRIPT_EXITED = "ci.sh exited "  # how the agent's line after ci.sh begins (Docker looks for the exit then)
GO_LINE = "told to start"  # the first line after the start arrived: a builder that logged it has run or runs ci.sh
DONE = "done"  # the agent's last line when the start carried a seal: "[katkit-agent] done SEAL CODE" (Docker)
LOCALHOST = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
             "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")  # Docker's for 'none'

# git asks this helper for credentials only when the server wants them. The token reaches git through the
# environment of that git process, never its arguments (which any user of the host can list).
CREDENTIAL_HELPER = "!f() { test \"$1\" = get && printf 'username=x-access-token\\npassword=%s\\n' \"$KATKIT_GIT_TOKEN\"; }; f"


def credential_args(token: str | None) -> list[str]:
    """``git -c`` options that answer with the token from ``$KATKIT_GIT_TOKEN`` (and no other helper)."""
    return ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"] if token else []


def _say(out: IO[bytes], text: str) -> None:
    out.write(f"[katkit-agent] {text}\n".encode())
    out.flush()


def _cache_places(cache: dict[str, Any], cwd: str, home: str) -> list[tuple[str, str, str]]:
    """(path as declared, where it is in this builder, where its copy is in the cache) for each cache path; ``~/``
    is ci.sh's HOME."""
    places = []
    for path in cache.get("paths") or []:
        path = str(path)
        if path.startswith("~/"):
            rel = path[2:]
            places.append((path, os.path.join(home, rel), os.path.join(cache["dir"], "home", rel)))
        else:
            places.append((path, os.path.join(cwd, path), os.path.join(cache["dir"], "checkout", path)))
    return places


def _copy(src: str, dst: str) -> None:
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)


def restore_cache(cache: dict[str, Any], cwd: str, home: str, out: IO[bytes]) -> None:
    """Copy each cached path back where ci.sh expects it (before ci.sh). A cache that cannot be read is no failure."""
    for path, here, kept in _cache_places(cache, cwd, home):
        if not os.path.lexists(kept):
            _say(out, f"cache: nothing kept yet for {path}")
            continue
        try:
            _copy(kept, here)
            _say(out, f"cache: restored {path}")
        except OSError as exc:
            _say(out, f"cache: could not restore {path} ({exc}); ci.sh runs without it")


def save_cache(cache: dict[str, Any], cwd: str, home: str, out: IO[bytes]) -> None:
    """Replace each cached path's copy with what ci.sh left (after a success). Each copy is written aside and renamed
    into place, so a shard that reads the cache meanwhile sees the old copy or the new one, never half of one."""
    for path, here, kept in _cache_places(cache, cwd, home):
        if not os.path.lexists(here):
            continue
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        new, old = f"{kept}.new-{tag}", f"{kept}.old-{tag}"
        try:
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            _copy(here, new)
            if os.path.lexists(kept):
                os.rename(kept, old)
            os.rename(new, kept)
            _say(out, f"cache: saved {path}")
        except OSError as exc:
            _say(out, f"cache: could not save {path} ({exc})")
        finally:
            for leftover in (new, old):
                if os.path.isdir(leftover) and not os.path.islink(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
                elif os.path.lexists(leftover):
                    os.unlink(leftover)


def _checkout(spec: dict[str, Any], env: dict[str, str] | None, out: IO[bytes]) -> str:
    """Clone and check out the sha into the workspace; '' when done, else why not (its output is in the log)."""
    ws = spec["workspace"]
    git_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    # a tenant that passes the GitHub token to ci.sh (GITHUB_TOKEN) lets the agent clone with it too
    token = (env or os.environ).get("GITHUB_TOKEN") if spec["repo_url"].startswith(("https://", "http://")) else None
    if token:
        git_env["KATKIT_GIT_TOKEN"] = token
    if os.path.isdir(ws):  # left half-made: a builder start that crashed, or a checkout tried again once told
        shutil.rmtree(ws, ignore_errors=True)
    for cmd in (
        ["git", *credential_args(token), "-c", "safe.directory=*", "clone", "--quiet", "--no-checkout", spec["repo_url"], ws],
        ["git", "-C", ws, "-c", "advice.detachedHead=false", "checkout", "--quiet", spec["sha"]],
    ):
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=git_env, check=False)
        if proc.returncode != 0:
            out.write(proc.stdout)
            return f"checkout failed: git {'clone' if 'clone' in cmd else 'checkout'} exited {proc.returncode}"
    return ""


def listen(go: dict[str, Any]) -> int:
    """Where the word to start comes from: stdin, or the FIFO, opened read-write (a writer's close is no end of file;
    a writer can open it, and what it writes stays, from now on)."""
    return os.open(go["from"], os.O_RDWR | os.O_NONBLOCK) if go.get("from") != "stdin" else sys.stdin.fileno()


def await_go(go: dict[str, Any], fd: int) -> dict[str, Any] | None:
    """The first line of JSON (an object) on ``fd`` (``listen``), or None when none came within ``go["timeout"]``
    seconds (or stdin ended). A line that is no JSON object (garbled) is skipped."""
    fifo = go.get("from") != "stdin"
    deadline = time.monotonic() + float(go.get("timeout", 3600))
    data = b""
    try:
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    return message
            left = deadline - time.monotonic()
            if not select.select([fd], [], [], max(0.0, min(left, 60.0)))[0]:
                if left <= 0:
                    return None  # nothing came, not even at the last look
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return None  # stdin closed: nobody can tell it to start any more
            data += chunk
    finally:
        if fifo:
            os.close(fd)


def name_localhost(out: IO[bytes], path: str = "/etc/hosts") -> None:
    """A container whose network the engine disabled (a namespace of its own with only loopback, as on Docker's network
    ``none``) gets an empty /etc/hosts, where nothing names localhost: the agent adds what ``none`` would have there
    (unless a line names localhost already)."""
    try:
        with open(path, "a+") as f:
            f.seek(0)
            text = f.read()
            if not any("localhost" in line.split("#")[0].split()[1:] for line in text.splitlines()):
                f.write(("\n" if text and not text.endswith("\n") else "") + LOCALHOST)
    except OSError as exc:
        _say(out, f"could not name localhost in {path}: {exc}")


def run(spec: dict[str, Any], out: IO[bytes], on_go: Callable[[dict[str, Any]], None] = lambda message: None) -> dict[str, Any]:
    """Check out and run ci.sh; return what goes into exit.json. ``out`` is a binary file for the log. ``on_go``
    is called with the message when a builder prepared in advance has been told to start."""
    started = time.time()
    ws = spec["workspace"]
    sha = spec["sha"]
    env: dict[str, str] | None = spec.get("env")
    go = spec.get("go")
    fd = listen(go) if go else -1  # first: a start that comes while the agent checks out waits for it
    if spec.get("hosts"):
        name_localhost(out)
    checked_out = bool(spec.get("checked_out")) and os.path.isdir(os.path.join(ws, ".git"))
    _say(out, f"checked out {sha} in advance" if checked_out else f"checking out {sha} from {spec['repo_url']}")
    failed = "" if checked_out else _checkout(spec, None if go else env, out)
    if go:
        if failed:
            _say(out, f"{failed}; tried again when told to start")
        _say(out, READY_LINE)
        message = await_go(go, fd)
        if message is None:
            reason = f"not started: no start came within {float(go.get('timeout', 3600)):.0f} s (ci.sh did not run)"
            _say(out, reason)
            return {"exit_code": NOT_STARTED, "reason": reason, "started": False, "started_at": started,
                    "ended_at": time.time()}
        on_go(message)
        _say(out, GO_LINE)
        env = {**(env if env is not None else os.environ), **(message.get("env") or {})}
        started = time.time()
        if failed:
            failed = _checkout(spec, env, out)
    if failed:
        _say(out, failed)
        return {"exit_code": AGENT_FAILURE, "reason": failed, "started_at": started, "ended_at": time.time()}
    cwd = os.path.join(ws, spec.get("folder") or "")
    script = spec.get("script", "ci.sh")
    if not os.path.isfile(os.path.join(cwd, script)):
        reason = f"{script} not found in {spec.get('folder') or 'the repository root'}"
        _say(out, reason)
        return {"exit_code": AGENT_FAILURE, "reason": reason, "started_at": started, "ended_at": time.time()}
    cache = spec.get("cache")
    home = (env or os.environ).get("HOME") or os.path.expanduser("~")
    if cache and cache.get("paths"):
        restore_cache(cache, cwd, home, out)
    _say(out, f"running {script} (phase {(env or os.environ).get('KATKIT_PHASE', '?')})")
    ci_started = time.time()
    proc = subprocess.run(["bash", script], cwd=cwd, env=env if env is not None else dict(os.environ),
                          stdin=subprocess.DEVNULL if go else None, stdout=out, stderr=subprocess.STDOUT, check=False)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    ended = time.time()
    reason = f"{script} exited {code} in {ended - ci_started:.1f} s"  # SCRIPT_EXITED for ci.sh
    _say(out, reason)
    if code == 0 and cache and cache.get("paths") and cache.get("save", True):
        save_cache(cache, cwd, home, out)
    return {"exit_code": code, "reason": reason, "started_at": started, "ci_started_at": ci_started, "ended_at": ended}


def run_in_state_dir(state_dir: str) -> int:
    with open(os.path.join(state_dir, "spec.json")) as f:
        spec = json.load(f)
    started = os.path.join(state_dir, "started")
    with open(os.path.join(state_dir, "log"), "ab", buffering=0) as out:
        try:
            result = run(spec, out, on_go=lambda message: open(started, "w").close())
        except Exception as exc:  # the agent must always leave exit.json behind
            result = {"exit_code": AGENT_FAILURE, "reason": f"agent error: {exc}", "ended_at": time.time()}
            if spec.get("go") and not os.path.exists(started):
                result["started"] = False  # prepared, never told: ci.sh did not run (its builder is made anew)
            _say(out, result["reason"])
    tmp = os.path.join(state_dir, "exit.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(state_dir, "exit.json"))
    return int(result["exit_code"])


def command(state_dir: str | os.PathLike[str]) -> list[str]:
    """How a builder starts the agent on ``state_dir`` (stdlib only: no site-packages, no user environment)."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(state_dir)]


def _not_dumpable() -> None:
    """Keep ci.sh (same user; a child, so it never inherits this: an exec resets it) out of the agent's memory
    (/proc/1/mem), where the seal of its last line is: prctl(PR_SET_DUMPABLE, 0). Best effort: no libc, no seal lost."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--spec-json":
        sys.stdout.flush()
        out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
        told: dict[str, Any] = {}
        _not_dumpable()
        code = int(run(json.loads(argv[1]), out, on_go=told.update)["exit_code"])
        seal = told.get("seal")
        if isinstance(seal, str) and seal.isalnum():  # the worker takes this line as the end: nothing follows it,
            _say(out, f"{DONE} {seal} {code}")          # and ci.sh, which never saw the seal, cannot forge it
        os._exit(code)  # all is written (unbuffered): no interpreter teardown before the container stops
    if len(argv) == 1:
        os._exit(run_in_state_dir(argv[0]))  # exit.json is written and closed: no interpreter teardown to wait for
    print("usage: agent.py STATE_DIR | agent.py --spec-json JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
