"""Git access for the worker and the starter: a bare mirror per repository URL, kept under the katkit home.

Resolving a ref and reading files at a sha happen in the mirror, so nothing is checked out here; the
builder's agent makes its own checkout.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from katkit.agent import credential_args
from katkit.errors import ConfigError, InfraError, RefNotFound

_SHA = re.compile(r"^[0-9a-f]{4,40}$")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@host:owner/repo
GIT_TIMEOUT_S = 300


def _git(*args: str, cwd: Path | None = None, check: bool = True, token: str | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    env.pop("KATKIT_GITHUB_TOKEN", None)
    if token:
        env["KATKIT_GIT_TOKEN"] = token
    try:
        proc = subprocess.run(
            ["git", *credential_args(token), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
            check=False, input=stdin,
        )
    except FileNotFoundError:
        raise InfraError("git is not installed; install git on the worker host") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"git {args[0]} took longer than {GIT_TIMEOUT_S}s") from None
    if check and proc.returncode != 0:
        raise InfraError(f"git {args[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return proc


def is_remote(url: str) -> bool:
    """A URL git reaches over the network (it may need credentials), not a path on this host."""
    return url.startswith(("http://", "https://", "ssh://", "git://")) or bool(_SCP_LIKE.match(url))


def normalize_url(url: str) -> str:
    """A local path becomes an absolute path; URLs are kept."""
    if "://" in url or _SCP_LIKE.match(url):
        return url
    return str(Path(url).expanduser().resolve())


class RepoMirror:
    """Bare mirrors of linked repositories under ``cache_dir``, one per URL, safe across threads and processes."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def _path(self, url: str) -> Path:
        return self.cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16]

    @contextmanager
    def _locked(self, url: str) -> Iterator[Path]:
        path = self._path(url)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path

    def _fetch(self, url: str, path: Path, token: str | None) -> None:
        if not (path / "HEAD").exists():
            proc = _git("clone", "--quiet", "--mirror", url, str(path), check=False, token=token)
            if proc.returncode != 0:
                last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
                if "Authentication failed" in last or "could not read Username" in last:
                    how = "set KATKIT_GITHUB_TOKEN to a token that can read it" if not token else "check that KATKIT_GITHUB_TOKEN can read it"
                    raise ConfigError(f"{url} refused katkit's credentials; {how}")
                if "does not exist" in last or "not a git repository" in last or "not found" in last.lower():
                    raise RefNotFound(f"repository {url} cannot be read ({last}); check the link's url in katkit.yaml")
                raise InfraError(f"cannot clone {url}: {last}")
        else:
            _git("fetch", "--quiet", "--prune", "origin", cwd=path, token=token)

    def _rev(self, path: Path, rev: str) -> str | None:
        proc = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=path, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _commits_starting(self, path: Path, prefix: str) -> list[str]:
        """Every commit whose sha starts with ``prefix`` (git's own lookup lists objects of every type)."""
        objects = _git("rev-parse", f"--disambiguate={prefix}", cwd=path, check=False).stdout.split()
        if not objects:
            return []
        kinds = _git("cat-file", "--batch-check=%(objectname) %(objecttype)", cwd=path, check=False,
                     stdin="\n".join(objects) + "\n").stdout.split("\n")
        return sorted(line.split()[0] for line in kinds if line.endswith(" commit"))

    def _rev_sha(self, path: Path, url: str, sha: str) -> str | None:
        """The commit a full or abbreviated sha names; an abbreviation two commits share is refused by name."""
        found = self._rev(path, sha)
        if found is None and len(sha) < 40:
            matches = self._commits_starting(path, sha)
            if len(matches) > 1:
                shown = ", ".join(m[:12] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
                raise RefNotFound(f"sha {sha!r} is ambiguous in {url}: it matches {shown}; give more digits")
        return found

    def resolve(self, url: str, *, sha: str | None = None, branch: str | None = None, pr: int | None = None,
                token: str | None = None) -> str:
        """Return the full 40-character sha for a sha (full or abbreviated), a branch or a pull request."""
        url = normalize_url(url)
        with self._locked(url) as path:
            if sha is not None:
                if not _SHA.match(sha):
                    raise RefNotFound(f"{sha!r} is not a commit sha; give 4 to 40 hex digits")
                found = self._rev_sha(path, url, sha) if (path / "HEAD").exists() else None
                if found is None:
                    self._fetch(url, path, token)
                    found = self._rev_sha(path, url, sha)
                if found is None:
                    raise RefNotFound(f"commit {sha} is not in {url}; push it or pick another with --sha")
                return found
            self._fetch(url, path, token)
            ref = f"refs/heads/{branch}" if branch is not None else f"refs/pull/{pr}/head"
            found = self._rev(path, ref)
            if found is None:
                what = f"branch {branch!r}" if branch is not None else f"pull request #{pr}"
                raise RefNotFound(f"{what} is not in {url}; check the name")
            return found

    def read(self, url: str, sha: str, path_in_repo: str, token: str | None = None) -> str | None:
        """The file's text at ``sha``, or None when the file is not there."""
        url = normalize_url(url)
        with self._locked(url) as path:
            if self._rev(path, sha) is None:
                self._fetch(url, path, token)
            proc = _git("show", f"{sha}:{path_in_repo}", cwd=path, check=False)
        if proc.returncode != 0:
            if "does not exist" in proc.stderr or "exists on disk, but not in" in proc.stderr:
                return None
            raise InfraError(f"cannot read {path_in_repo} at {sha[:12]}: {proc.stderr.strip()}")
        return proc.stdout

    def symlink_in(self, url: str, sha: str, folder: str) -> str | None:
        """The first part of ``folder`` that is a symlink at ``sha`` (it could lead out of the checkout), else None."""
        if not folder:
            return None
        url = normalize_url(url)
        parts = folder.split("/")
        with self._locked(url) as path:
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                entry = _git("ls-tree", sha, "--", prefix, cwd=path, check=False).stdout.split(None, 1)
                if entry and entry[0] == "120000":
                    return prefix
        return None

    def mirror_path(self, url: str) -> Path:
        return self._path(normalize_url(url))
