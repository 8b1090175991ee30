"""The exception tree of katkit. Every error a user sees is one line: what is wrong and how to fix it.

    KatkitError
    ├── BadInput                 exit 2, never retried (ApplicationError type ErrorType.BAD_INPUT)
    │   ├── RepoFileError        a malformed ci.sh / katkitconfig.js / servicedescription.js
    │   ├── ConfigError          a malformed katkit.yaml or setting
    │   ├── UnknownName          unknown tenant, repo, run or phase
    │   └── RefNotFound          a sha / branch / PR that the repository does not have
    ├── InfraError               a fault of something we depend on (git, Docker, AWS): retried with backoff
    └── RunFailed                exit 1: the run failed, was rejected or cancelled

Third-party errors are translated at the boundary: ``raise InfraError(...) from exc``.
"""

from __future__ import annotations


class KatkitError(Exception):
    """Root of every katkit error."""

    exit_code = 1


class BadInput(KatkitError):
    """Input that will never work as given. Not retried; exit code 2."""

    exit_code = 2


class RepoFileError(BadInput):
    """A file in the user's repository is malformed."""

    def __init__(self, file: str, problem: str, fix: str) -> None:
        self.file, self.problem, self.fix = file, problem, fix
        super().__init__(f"{file}: {problem} — {fix}")


class ConfigError(BadInput):
    """katkit.yaml or a setting is malformed."""


class UnknownName(BadInput):
    """A tenant, repo, run or phase that does not exist."""


class RefNotFound(BadInput):
    """A sha, branch or PR that the repository does not have."""


class InfraError(KatkitError):
    """Something katkit depends on failed; worth retrying."""


class RunFailed(KatkitError):
    """The run failed, was rejected or was cancelled."""

    exit_code = 1


def did_you_mean(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
