#!/usr/bin/env python3
"""The builder agent: check out one commit into a fresh workspace and run its ci.sh. Standard library only.

It runs inside every builder (a local process, a container, an ECS task). Its spec is a JSON file::

    {"repo_url": "...", "sha": "<40 hex>", "folder": "", "script": "ci.sh", "workspace": "/path", "env": {...},
     "checked_out": false,   # true: the workspace holds the sha already (a builder prepared in advance)
     "cache": {"dir": "/cache/of/this/tenant/repo/branch", "paths": ["node_modules", "~/.cache/pip"], "save": true}}

``cache`` (optional): each path (``~/x``: in HOME; else in the checkout's folder) is copied from ``dir`` before
ci.sh and, when ci.sh exits 0 and ``save`` is true, copied back after it.

``agent.py STATE_DIR`` reads ``STATE_DIR/spec.json`` and writes, in ``STATE_DIR``: ``log`` (ci.sh's stdout
and stderr with the agent's own lines), and at the end ``exit.json`` (exit code, times, reason), written
atomically, so a watcher that finds it knows the log is complete. ``command()`` is how builders start it.
``agent.py --spec-json JSON`` runs in the foreground with the log on stdout and ci.sh's environment taken
from the agent's own (containers: Docker sets the contract's variables).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import IO, Any

AGENT_FAILURE = 255  # the agent itself could not run ci.sh (checkout failed, no ci.sh)

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


def run(spec: dict[str, Any], out: IO[bytes]) -> dict[str, Any]:
    """Check out and run ci.sh; return what goes into exit.json. ``out`` is a binary file for the log."""
    started = time.time()
    ws = spec["workspace"]
    sha = spec["sha"]
    git_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    # a tenant that passes the GitHub token to ci.sh (GITHUB_TOKEN) lets the agent clone with it too
    token = (spec.get("env") or os.environ).get("GITHUB_TOKEN") if spec["repo_url"].startswith(("https://", "http://")) else None
    if token:
        git_env["KATKIT_GIT_TOKEN"] = token
    checked_out = bool(spec.get("checked_out")) and os.path.isdir(os.path.join(ws, ".git"))
    _say(out, f"checked out {sha} in advance" if checked_out else f"checking out {sha} from {spec['repo_url']}")
    for cmd in () if checked_out else (
        ["git", *credential_args(token), "-c", "safe.directory=*", "clone", "--quiet", "--no-checkout", spec["repo_url"], ws],
        ["git", "-C", ws, "-c", "advice.detachedHead=false", "checkout", "--quiet", sha],
    ):
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=git_env, check=False)
        if proc.returncode != 0:
            out.write(proc.stdout)
            reason = f"checkout failed: git {'clone' if 'clone' in cmd else 'checkout'} exited {proc.returncode}"
            _say(out, reason)
            return {"exit_code": AGENT_FAILURE, "reason": reason, "started_at": started, "ended_at": time.time()}
    cwd = os.path.join(ws, spec.get("folder") or "")
    script = spec.get("script", "ci.sh")
    if not os.path.isfile(os.path.join(cwd, script)):
        reason = f"{script} not found in {spec.get('folder') or 'the repository root'}"
        _say(out, reason)
        return {"exit_code": AGENT_FAILURE, "reason": reason, "started_at": started, "ended_at": time.time()}
    cache = spec.get("cache")
    home = (spec.get("env") or os.environ).get("HOME") or os.path.expanduser("~")
    if cache and cache.get("paths"):
        restore_cache(cache, cwd, home, out)
    _say(out, f"running {script} (phase {(spec.get('env') or os.environ).get('KATKIT_PHASE', '?')})")
    ci_started = time.time()
    env = spec.get("env")
    proc = subprocess.run(["bash", script], cwd=cwd, env=env if env is not None else dict(os.environ),
                          stdout=out, stderr=subprocess.STDOUT, check=False)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    ended = time.time()
    reason = f"{script} exited {code} in {ended - ci_started:.1f} s"
    _say(out, reason)
    if code == 0 and cache and cache.get("paths") and cache.get("save", True):
        save_cache(cache, cwd, home, out)
    return {"exit_code": code, "reason": reason, "started_at": started, "ci_started_at": ci_started, "ended_at": ended}


def run_in_state_dir(state_dir: str) -> int:
    with open(os.path.join(state_dir, "spec.json")) as f:
        spec = json.load(f)
    with open(os.path.join(state_dir, "log"), "ab", buffering=0) as out:
        try:
            result = run(spec, out)
        except Exception as exc:  # the agent must always leave exit.json behind
            result = {"exit_code": AGENT_FAILURE, "reason": f"agent error: {exc}", "ended_at": time.time()}
            _say(out, result["reason"])
    tmp = os.path.join(state_dir, "exit.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(state_dir, "exit.json"))
    return int(result["exit_code"])


def command(state_dir: str | os.PathLike[str]) -> list[str]:
    """How a builder starts the agent on ``state_dir`` (stdlib only: no site-packages, no user environment)."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(state_dir)]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--spec-json":
        sys.stdout.flush()
        result = run(json.loads(argv[1]), os.fdopen(sys.stdout.fileno(), "wb", buffering=0, closefd=False))
        return int(result["exit_code"])
    if len(argv) == 1:
        return run_in_state_dir(argv[0])
    print("usage: agent.py STATE_DIR | agent.py --spec-json JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
