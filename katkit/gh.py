"""GitHub through PyGithub: refs and pull requests, commit statuses and deployments.

The token comes from the worker's or starter's own settings (``KATKIT_GITHUB_TOKEN``) and stays in this
process: it is never part of a workflow input, a search attribute, a log line or an error message.
Every GitHub failure becomes one katkit error line: a ref that is not there is bad input, a GitHub that is
down or rate-limited is an infrastructure fault (retried where a run reports, one line where a start
resolves).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from katkit.errors import BadInput, ConfigError, InfraError, KatkitError, RefNotFound
from katkit.models import GitHubUpdate, PullInfo

if TYPE_CHECKING:
    from github.Repository import Repository

    from katkit.config import LinkConfig

TIMEOUT_S = 15
DESCRIPTION_MAX = 140  # GitHub refuses longer status descriptions
T = TypeVar("T")


def _translate(exc: Exception, where: str, what: str) -> KatkitError:
    """One line for a PyGithub or transport error; never the token, never a traceback."""
    import requests
    from github import BadCredentialsException, GithubException, RateLimitExceededException, UnknownObjectException

    headers = {k.lower(): v for k, v in ((getattr(exc, "headers", None) or {}).items())}
    status = getattr(exc, "status", None)
    if isinstance(exc, RateLimitExceededException) or (status in (403, 429) and (
            headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers)):
        reset = headers.get("x-ratelimit-reset")
        when = f" until {datetime.fromtimestamp(int(reset), timezone.utc):%H:%M:%S} UTC" if reset else ""
        return InfraError(f"GitHub at {where} is rate-limiting katkit{when}; wait, or use a token with a higher limit")
    if isinstance(exc, BadCredentialsException) or status == 401:
        return ConfigError(f"GitHub at {where} refused the token (401); set KATKIT_GITHUB_TOKEN to a valid token")
    if isinstance(exc, UnknownObjectException):
        return RefNotFound(f"{what} was not found on GitHub at {where}; check the name, and that the token can read the repo")
    if isinstance(exc, GithubException):
        message = exc.data.get("message", "") if isinstance(exc.data, dict) else ""
        if exc.status == 403:
            return ConfigError(f"GitHub at {where} refused {what} (403 {message}); give the token access to the repo")
        if exc.status == 422:
            return BadInput(f"GitHub at {where} refused {what} (422 {message})")
        return InfraError(f"GitHub at {where} answered {exc.status} {message}".rstrip() + f" for {what}; try again later")
    if isinstance(exc, requests.RequestException):
        return InfraError(f"GitHub at {where} did not answer ({type(exc).__name__}); check the network or try again later")
    raise exc


class GitHubRepo:
    """One linked repository on GitHub (or GitHub Enterprise: the link's API url)."""

    def __init__(self, link: LinkConfig, token: str | None) -> None:
        from github import Auth, Github

        if not link.github or not link.github_api_url:
            raise BadInput(f"repo {link.repo!r} is not a GitHub repo; set github: owner/name on its link in katkit.yaml")
        self.full_name = link.github
        self.api_url = link.github_api_url
        self.home_branch = link.branch
        self._gh = Github(auth=Auth.Token(token) if token else None, base_url=self.api_url,
                          timeout=TIMEOUT_S, retry=None, lazy=True)  # retries are Temporal's, with backoff
        self.repo: Repository = self._gh.get_repo(self.full_name)  # lazy client: no request until a call needs one

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, with any GitHub or transport failure turned into one katkit error line about ``what``."""
        try:
            return fn()
        except KatkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated to one line below
            raise _translate(exc, self.api_url, what) from None

    # -- refs and pull requests ------------------------------------------------------------------------
    def branch_sha(self, branch: str) -> str:
        return self.call(f"branch {branch!r} of {self.full_name}", lambda: self.repo.get_branch(branch).commit.sha)

    def pull_sha(self, number: int) -> str:
        """The head sha of PR ``number``, which must be open against the link's home branch."""
        def fetch() -> tuple[str, str, str]:
            pr = self.repo.get_pull(number)  # lazy objects fetch on first use: inside the translated call
            return pr.base.ref, pr.state, pr.head.sha

        base, state, sha = self.call(f"pull request #{number} of {self.full_name}", fetch)
        if base != self.home_branch:
            raise BadInput(f"pull request #{number} of {self.full_name} is against {base!r}, not the link's "
                           f"home branch {self.home_branch!r}; pick a PR against {self.home_branch!r} or use --sha")
        if state != "open":
            raise BadInput(f"pull request #{number} of {self.full_name} is {state}; pick an open one or use --sha")
        return sha

    def open_pulls(self) -> list[PullInfo]:
        def fetch() -> list[PullInfo]:
            return [PullInfo(number=p.number, title=p.title, author=p.user.login if p.user else "", sha=p.head.sha,
                             branch=p.head.ref, url=p.html_url or "")
                    for p in self.repo.get_pulls(state="open", base=self.home_branch, sort="created", direction="desc")]
        return self.call(f"open pull requests of {self.full_name}", fetch)

    # -- answers to comments (decisions from GitHub) --------------------------------------------------
    def reply(self, body: str, *, pull: int | None = None, sha: str | None = None) -> None:
        """A comment on PR ``pull`` (its conversation) or on commit ``sha``."""
        if pull is not None:
            self.call(f"a comment on pull request #{pull}", lambda: self.repo.get_issue(pull).create_comment(body))
        elif sha:
            self.call(f"a comment on {sha[:12]}", lambda: self.repo.get_commit(sha).create_comment(body))

    # -- what katkit did ----------------------------------------------------------------------------------
    def commit_status(self, sha: str, update: GitHubUpdate, target_url: str) -> None:
        self.call(f"status {update.context} on {sha[:12]}", lambda: self.repo.get_commit(sha).create_status(
            state=update.state, target_url=target_url, description=update.description[:DESCRIPTION_MAX],
            context=update.context))

    def deployment(self, sha: str, update: GitHubUpdate, key: str) -> int:
        """The deployment of this run execution (found again after a retry, else created)."""
        def find_or_create() -> int:
            for d in self.repo.get_deployments(sha=sha, environment=update.environment):
                if isinstance(d.payload, dict) and d.payload.get("katkit_execution") == key:
                    return d.id
            return self.repo.create_deployment(
                ref=sha, environment=update.environment, description=update.description[:DESCRIPTION_MAX],
                payload={"katkit_execution": key}, auto_merge=False, required_contexts=[],
                production_environment=update.production, transient_environment=False,
            ).id
        return self.call(f"a deployment of {sha[:12]} to {update.environment}", find_or_create)

    def deployment_status(self, deployment_id: int, update: GitHubUpdate, target_url: str) -> None:
        self.call(f"deployment {deployment_id} status {update.state}", lambda: self.repo.get_deployment(deployment_id).create_status(
            state=update.state, target_url=target_url, description=update.description[:DESCRIPTION_MAX],
            auto_inactive=False))
        if update.state == "success":
            self.call(f"the deployment {deployment_id} replaced", lambda: self._inactivate_previous(deployment_id, update))

    def _inactivate_previous(self, deployment_id: int, update: GitHubUpdate) -> None:
        """The environment's previous successful deployment becomes inactive: the new one replaced it."""
        for i, d in enumerate(self.repo.get_deployments(environment=update.environment)):
            if i >= 20:
                return
            if d.id == deployment_id:
                continue
            latest = next(iter(d.get_statuses()), None)
            if latest is not None and latest.state == "success":
                d.create_status(state="inactive", description=f"replaced by deployment {deployment_id}", auto_inactive=False)
                return
