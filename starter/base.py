"""What every starter call needs: the client and settings, katkit.yaml, whether a worker polls, a run's handle,
and starting a checked run. ``starter.api.Katkit`` is made of this and the calls in ``ledger`` and ``promote``."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from katkit.backends import get_builder, get_platform
from katkit.config import KatkitConfig, LinkConfig, NoConfigFound, Settings, load_config
from katkit.errors import BadInput, InfraError, UnknownName
from katkit.gitrepo import RepoMirror
from katkit.logstore import LogStore, log_store_for
from katkit.models import CommitRunInput, RunStatus
from katkit.names import COMMIT_RUN, commit_run_id
from katkit.plan import check_run
from katkit.temporal import describe_or_none, is_open, run_search_attributes

M = TypeVar("M", bound=BaseModel)
QUERY_DEADLINE = timedelta(seconds=5)
"""How long a query or a decision waits for a worker to answer; then the starter says so instead of hanging."""
POLLER_FRESH = timedelta(seconds=90)
"""A worker long-polls for at most about a minute: a poller not seen for longer than this has gone."""


@dataclass
class RunHandle:
    run_id: str
    sha: str
    url: str
    existing: bool = False
    """True when the same run was already open: it was returned, not started again."""


async def closed_result(handle: WorkflowHandle[Any, Any], model: type[M]) -> M | None:
    """A closed workflow's result, or the status it attached to its failure; None when it has neither."""
    try:
        result = await handle.result(follow_runs=False)
        return result if isinstance(result, model) else model.model_validate(result)
    except WorkflowFailureError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            details = cause.details[0]
            return details if isinstance(details, model) else model.model_validate(details)
        return None


async def watch(step: Callable[[], Awaitable[tuple[M, bool]]], on_change: Callable[[M], object] | None,
                interval: float, exclude: Any = None) -> M:
    """Call ``step`` (-> the status, whether it has ended) until it has ended; ``on_change(status)`` whenever the
    status moved (``exclude``: fields that move without news). Return the last status."""
    last = None
    while True:
        status, ended = await step()
        snapshot = status.model_dump_json(exclude=exclude)
        if snapshot != last and on_change is not None:
            on_change(status)
        last = snapshot
        if ended:
            return status
        await asyncio.sleep(interval)


class KatkitBase:
    def __init__(self, client: Client, settings: Settings, config: KatkitConfig | None = None,
                 log_store: LogStore | None = None, config_path: str | None = None) -> None:
        self.client = client
        self.settings = settings
        self._config = config
        self._config_path = config_path
        self.log_store = log_store or log_store_for(settings)
        self.mirror = RepoMirror(settings.home / "git")

    @property
    def config(self) -> KatkitConfig:
        if self._config is None:
            self._config = load_config(self._config_path)
        return self._config

    def _token(self, link: LinkConfig) -> str | None:
        return link.github_token(self.settings.github_token)

    def check_tenant_filter(self, tenant: str | None) -> None:
        """A tenant filter must name a tenant of katkit.yaml (when one is found; a typo would list nothing)."""
        if tenant is None:
            return
        try:
            config = self.config
        except NoConfigFound:  # no katkit.yaml on this machine (none named either): nothing to check it against
            return
        config.tenant(tenant)

    # -- is anyone working? ----------------------------------------------------------------------------
    async def worker_polling(self) -> bool:
        """Whether a worker has polled the task queue for workflow tasks within the last long poll or so."""
        resp = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(namespace=self.client.namespace, task_queue=TaskQueue(name=self.settings.task_queue),
                                     task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
            timeout=timedelta(seconds=5))
        now = datetime.now(timezone.utc)
        return any(now - p.last_access_time.ToDatetime(tzinfo=timezone.utc) < POLLER_FRESH for p in resp.pollers)

    @property
    def no_worker_note(self) -> str:
        return (f"no worker is polling task queue {self.settings.task_queue!r} at {self.settings.address}; "
                "start one with 'katkit worker' (or 'katkit dev')")

    @property
    def no_answer_note(self) -> str:
        """What to say when a worker polls but did not answer a query in time (it has just gone, or is stuck)."""
        return (f"no worker answered on task queue {self.settings.task_queue!r} at {self.settings.address} within "
                f"{QUERY_DEADLINE.total_seconds():.0f} s; start one with 'katkit worker' (or 'katkit dev')")

    async def worker_note(self) -> str:
        """The one line that says no worker polls the task queue, or '' when one does."""
        return "" if await self.worker_polling() else self.no_worker_note

    async def _need_worker(self) -> None:
        """A query or an update waits for a worker: one line at once when none polls."""
        if not await self.worker_polling():
            raise InfraError(self.no_worker_note)

    # -- a run's handle --------------------------------------------------------------------------------
    async def _describe(self, handle: WorkflowHandle[Any, Any], what: str = "run") -> WorkflowExecutionDescription:
        desc = await describe_or_none(self.client, handle.id)
        if desc is None:
            raise UnknownName(f"no {what} {handle.id!r}; list runs with 'katkit list'")
        return desc

    async def _handle(self, run_id: str) -> WorkflowHandle[Any, RunStatus]:
        handle = self.client.get_workflow_handle(run_id, result_type=RunStatus)
        await self._describe(handle)
        return handle

    # -- starting --------------------------------------------------------------------------------------
    def prepare_run(self, tenant: str, repo: str, *, sha: str | None = None, branch: str | None = None,
                    pr: int | None = None, by: str | None = None, ref: str | None = None,
                    untrusted: bool = False) -> CommitRunInput:
        """Resolve the ref and check the run as its checkout will (``katkit.plan.check_run``), starting nothing."""
        if [sha, branch, pr].count(None) != 2:
            raise BadInput("give exactly one of --sha, --branch or --pr")
        tenant_cfg = self.config.tenant(tenant)
        link = self.config.link(repo, tenant)
        token = self._token(link)
        if link.github and sha is None:  # GitHub says what the branch or PR points at (PRs: against the home branch)
            from katkit.gh import GitHubRepo

            gh = GitHubRepo(link, token)
            full = self.mirror.resolve(link.url, sha=gh.branch_sha(branch) if branch is not None else gh.pull_sha(pr or 0),
                                       token=token)
        else:
            full = self.mirror.resolve(link.url, sha=sha, branch=branch, pr=pr, token=token)
        plan = check_run(self.mirror, link, tenant_cfg, full, token,
                         lambda: get_builder(tenant_cfg.builder, self.settings.home, tenant_cfg), engine_may_be_away=True)
        if plan.service is not None:
            get_platform(tenant_cfg.platform, self.settings.home)  # a platform this katkit has (or one line why not)
        ref = ref or (f"branch {branch}" if branch else f"pr {pr}" if pr else f"sha {sha}")
        return CommitRunInput(tenant=tenant_cfg, link=link, sha=full, ref=ref, started_by=by or getpass.getuser(),
                              untrusted=untrusted)

    async def start_prepared(self, inp: CommitRunInput, run_id: str | None = None) -> RunHandle:
        run_id = run_id or commit_run_id(inp.tenant.name, inp.repo, inp.sha)
        existing = await is_open(self.client, run_id)
        rollback = inp.rollback
        await self.client.start_workflow(
            COMMIT_RUN, inp, id=run_id, task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=run_search_attributes(inp.tenant.name, inp.repo, inp.sha, "checkout"),
            memo={"started_by": inp.started_by, "ref": inp.ref},
            static_summary=(f"rollback of {rollback.service} in {inp.tenant.name} to {rollback.image}, by {inp.started_by}"
                            if rollback else
                            f"{inp.repo}@{inp.sha[:12]} -> {inp.tenant.name} ({inp.tenant.env}), by {inp.started_by}"),
        )
        return RunHandle(run_id=run_id, sha=inp.sha, url=self.settings.run_url(run_id), existing=existing)
