"""The starter API: connect, start a run, approve, reject, cancel, status, logs, list.

    async with await Katkit.connect() as kk:          # settings from KATKIT_* env, katkit.yaml found as usual
        handle = await kk.start_run("d-taskrunner", "taskrunner", branch="main", by="alice")
        status = await kk.wait(handle.run_id)
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from pydantic import BaseModel

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus as ExecStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from katkit.backends import get_builder, get_platform
from katkit.config import KatkitConfig, NoConfigFound, Settings, load_config, load_settings
from katkit.errors import BadInput, InfraError, RunFailed, UnknownName, did_you_mean
from katkit.gitrepo import RepoMirror
from katkit.logstore import LogStore, log_store_for
from katkit.config import LinkConfig
from katkit.models import (
    CommitRunInput,
    Decision,
    DecisionInput,
    LockState,
    PhaseType,
    PullInfo,
    PromotionInput,
    PromotionStatus,
    RollbackSpec,
    RunStatus,
)
from katkit.names import (
    NAME_RULE,
    COMMIT_RUN,
    DEPLOY_LOCK,
    LOCK_STATE,
    PROMOTION,
    QUERY_STATUS,
    RUN_STATUSES,
    SA_PHASE,
    SA_REPO,
    SA_SHA,
    SA_STATUS,
    SA_TENANT,
    TERMINAL_STATUSES,
    UPDATE_DECIDE,
    commit_run_id,
    deploy_lock_id,
    is_safe_name,
    log_key,
)
from katkit.plan import read_plan
from katkit.platforms import DeploymentRecord
from katkit.temporal import connect

_OPEN = ExecStatus.RUNNING
M = TypeVar("M", bound=BaseModel)
QUERY_DEADLINE = timedelta(seconds=5)
"""How long a query or a decision waits for a worker to answer; then the starter says so instead of hanging."""
POLLER_FRESH = timedelta(seconds=90)
"""A worker long-polls for at most about a minute: a poller not seen for longer than this has gone."""
WORKER_CHECK_S = 5.0  # how often ``wait`` asks again whether a worker polls

def _exec_status_name(status: ExecStatus | None) -> str:
    name = status.name.lower() if status else "closed"
    return {"canceled": "cancelled", "completed": "succeeded"}.get(name, name)


async def _closed_result(handle: WorkflowHandle, model: type[M]) -> M | None:
    """A closed workflow's result, or the status it attached to its failure; None when it has neither."""
    try:
        return await handle.result(follow_runs=False)
    except WorkflowFailureError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            details = cause.details[0]
            return details if isinstance(details, model) else model.model_validate(details)
        return None


@dataclass
class RunHandle:
    run_id: str
    sha: str
    url: str
    existing: bool = False
    """True when the same run was already open: it was returned, not started again."""


@dataclass
class RunSummary:
    run_id: str
    tenant: str
    repo: str
    sha: str
    status: str
    phase: str
    started: str


class Katkit:
    def __init__(self, client: Client, settings: Settings, config: KatkitConfig | None = None,
                 log_store: LogStore | None = None, config_path: str | None = None) -> None:
        self.client = client
        self.settings = settings
        self._config = config
        self._config_path = config_path
        self.log_store = log_store or log_store_for(settings)
        self.mirror = RepoMirror(settings.home / "git")

    @classmethod
    async def connect(cls, settings: Settings | None = None, config: KatkitConfig | None = None,
                      config_path: str | None = None) -> Katkit:
        """Connect to Temporal; katkit.yaml is ``config``, else read (lazily) from ``config_path`` or as usual."""
        settings = settings or load_settings()
        return cls(await connect(settings), settings, config, config_path=config_path)

    async def __aenter__(self) -> Katkit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @property
    def config(self) -> KatkitConfig:
        if self._config is None:
            self._config = load_config(self._config_path)
        return self._config

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

    # -- starting ------------------------------------------------------------------------------------------
    def prepare_run(self, tenant: str, repo: str, *, sha: str | None = None, branch: str | None = None,
                    pr: int | None = None, by: str | None = None, ref: str | None = None) -> CommitRunInput:
        """Check everything a run needs (names, ref, repo files, backends) without starting anything."""
        if [sha, branch, pr].count(None) != 2:
            raise BadInput("give exactly one of --sha, --branch or --pr")
        tenant_cfg = self.config.tenant(tenant)
        link = self.config.link(repo, tenant)
        token = self._token(link)
        if link.github and sha is None:  # GitHub says what the branch or PR points at (PRs: against the home branch)
            from katkit.gh import GitHubRepo

            gh = GitHubRepo(link, token)
            sha = gh.branch_sha(branch) if branch is not None else gh.pull_sha(pr)  # type: ignore[arg-type]
            full = self.mirror.resolve(link.url, sha=sha, token=token)
        else:
            full = self.mirror.resolve(link.url, sha=sha, branch=branch, pr=pr, token=token)
        plan = read_plan(self.mirror, link, tenant_cfg.env, full, token)
        if any(p.type == PhaseType.EXECUTION for p in plan.phases):
            builder = get_builder(tenant_cfg.builder, self.settings.home, tenant_cfg)
            try:
                for image in sorted({p.image or "" for p in plan.phases if p.type == PhaseType.EXECUTION}):
                    builder.check_image(image or None)
            except InfraError:
                pass  # this machine cannot reach the tenant's engine; the worker's checkout checks again
        if plan.service is not None:
            get_platform(tenant_cfg.platform, self.settings.home)
        ref = ref or (f"branch {branch}" if branch else f"pr {pr}" if pr else f"sha {sha}")
        return CommitRunInput(tenant=tenant_cfg, link=link, sha=full, ref=ref, started_by=by or getpass.getuser())

    def _token(self, link: LinkConfig) -> str | None:
        return link.github_token(self.settings.github_token)

    def pull_requests(self, repo: str) -> list[PullInfo]:
        """Open PRs against the link's home branch, newest first (runs are filled in by ``prs``)."""
        from katkit.gh import GitHubRepo

        link = self.config.link(repo)
        return GitHubRepo(link, self._token(link)).open_pulls()

    async def prs(self, repo: str) -> list[PullInfo]:
        """Open PRs against the home branch, each with the latest katkit run's status per tenant of its head sha."""
        pulls = await asyncio.to_thread(self.pull_requests, repo)
        if pulls:
            shas = ", ".join(f'"{p.sha}"' for p in pulls)
            latest: dict[tuple[str, str], tuple[object, str]] = {}
            async for wf in self.client.list_workflows(f'{SA_REPO.name}="{repo}" AND {SA_SHA.name} IN ({shas})'):
                sa = wf.typed_search_attributes
                key = (sa.get(SA_SHA) or "", sa.get(SA_TENANT) or "")
                if key not in latest or wf.start_time > latest[key][0]:  # type: ignore[operator]
                    latest[key] = (wf.start_time, sa.get(SA_STATUS) or "")
            for p in pulls:
                p.runs = {tenant: status for (sha, tenant), (_, status) in sorted(latest.items()) if sha == p.sha}
        return pulls

    async def start_run(self, tenant: str, repo: str, *, sha: str | None = None, branch: str | None = None,
                        pr: int | None = None, by: str | None = None, ref: str | None = None) -> RunHandle:
        inp = await asyncio.to_thread(self.prepare_run, tenant, repo, sha=sha, branch=branch, pr=pr, by=by, ref=ref)
        return await self.start_prepared(inp)

    async def start_prepared(self, inp: CommitRunInput, run_id: str | None = None) -> RunHandle:
        run_id = run_id or commit_run_id(inp.tenant.name, inp.link.repo, inp.sha)
        existing = await self._is_open(run_id)
        await self.client.start_workflow(
            COMMIT_RUN, inp, id=run_id, task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(SA_TENANT, inp.tenant.name), SearchAttributePair(SA_REPO, inp.link.repo),
                SearchAttributePair(SA_SHA, inp.sha), SearchAttributePair(SA_PHASE, "checkout"),
                SearchAttributePair(SA_STATUS, "running"),
            ]),
            memo={"started_by": inp.started_by, "ref": inp.ref},
            static_summary=(f"rollback of {inp.rollback.service} in {inp.tenant.name} to {inp.rollback.image}, by {inp.started_by}"
                            if inp.rollback else
                            f"{inp.link.repo}@{inp.sha[:12]} -> {inp.tenant.name} ({inp.tenant.env}), by {inp.started_by}"),
        )
        return RunHandle(run_id=run_id, sha=inp.sha, url=self.settings.run_url(run_id), existing=existing)

    async def _is_open(self, run_id: str) -> bool:
        try:
            desc = await self.client.get_workflow_handle(run_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return desc.status == _OPEN

    # -- the gate ----------------------------------------------------------------------------------------
    async def approve(self, run_id: str, by: str, comment: str = "") -> Decision:
        return await self._decide(run_id, "approve", DecisionInput(by=by, comment=comment))

    async def reject(self, run_id: str, by: str, reason: str = "") -> Decision:
        return await self._decide(run_id, "reject", DecisionInput(by=by, reason=reason))

    async def _decide(self, run_id: str, kind: str, inp: DecisionInput) -> Decision:
        handle = await self._handle(run_id)
        await self._need_worker()
        try:
            return await handle.execute_update(UPDATE_DECIDE, args=[kind, inp], result_type=Decision,
                                               rpc_timeout=2 * QUERY_DEADLINE)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            msg = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise BadInput(f"{kind} refused: {msg}") from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                raise BadInput(f"{kind} refused: run {run_id} is not open") from None
            raise InfraError(f"no worker answered the {kind} of {run_id} within {2 * QUERY_DEADLINE.total_seconds():.0f} s"
                             f"; it may still be applied when a worker polls task queue "
                             f"{self.settings.task_queue!r} again: check with 'katkit status {run_id}'") from None

    async def cancel(self, run_id: str) -> None:
        handle = self.client.get_workflow_handle(run_id)
        desc = await self._describe(handle)
        if desc.status != _OPEN:
            status = desc.typed_search_attributes.get(SA_STATUS)  # how the run ended; a terminated one never said
            ended = status if status in TERMINAL_STATUSES else _exec_status_name(desc.status)
            raise BadInput(f"run {run_id} already ended ({ended}); nothing to cancel")
        await handle.cancel()

    # -- watching ----------------------------------------------------------------------------------------
    async def _describe(self, handle: WorkflowHandle) -> WorkflowExecutionDescription:
        try:
            return await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise UnknownName(f"no run {handle.id!r}; list runs with 'katkit list'") from None
            raise

    async def _handle(self, run_id: str) -> WorkflowHandle:
        handle = self.client.get_workflow_handle(run_id, result_type=RunStatus)
        await self._describe(handle)
        return handle

    async def status(self, run_id: str) -> RunStatus:
        """The run's status: queried while it runs, read from its result or failure once it has closed.

        With no worker polling, an open run's status comes from its search attributes and memo (a query would
        wait for a worker), with ``note`` saying so."""
        handle = self.client.get_workflow_handle(run_id, result_type=RunStatus)
        desc = await self._describe(handle)
        if desc.status != _OPEN:
            return await self._closed_status(handle, desc.status)
        return await self._open_status(handle, desc, await self.worker_polling())

    async def _open_status(self, handle: WorkflowHandle, desc: WorkflowExecutionDescription, polling: bool) -> RunStatus:
        """An open run's status: its query when a worker polls and answers in time, else what the server alone
        knows (search attributes, memo, start time) with ``note`` saying why."""
        if polling:
            try:
                return await handle.query(QUERY_STATUS, result_type=RunStatus, rpc_timeout=QUERY_DEADLINE)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    raise
                note = self.no_answer_note
        else:
            note = self.no_worker_note
        sa = desc.typed_search_attributes
        memo = await desc.memo()
        parts = str(memo.get("summary") or "").split(" | ")  # "<status>: <phase> | <run> [| deployed X] [| error]"
        error = parts[-1] if len(parts) >= 3 and not parts[-1].startswith("deployed ") else ""
        return RunStatus(run_id=desc.id, tenant=sa.get(SA_TENANT) or "?", env="?", repo=sa.get(SA_REPO) or "?",
                         sha=sa.get(SA_SHA) or "?", ref=str(memo.get("ref") or ""),
                         started_by=str(memo.get("started_by") or "?"), status=sa.get(SA_STATUS) or "running",
                         phase=sa.get(SA_PHASE) or "", started_at=desc.start_time, error=error, note=note)

    async def _closed_status(self, handle: WorkflowHandle, status: ExecStatus | None) -> RunStatus:
        try:
            found = await _closed_result(handle, RunStatus)
            if found is not None:
                return found
            # cancelled or terminated: the last state the workflow reported
            return await handle.query(QUERY_STATUS, result_type=RunStatus, rpc_timeout=timedelta(seconds=5))
        except Exception as exc:  # noqa: BLE001 - no worker to answer: say what history says
            name = status.name.lower() if status else "closed"
            return RunStatus(run_id=handle.id, tenant="?", env="?", repo="?", sha="?", started_by="?",
                             status="cancelled" if name == "canceled" else name, error=str(exc))

    async def wait(self, run_id: str, on_change=None, interval: float = 0.3) -> RunStatus:
        """Wait for the run to end; call ``on_change(status)`` whenever it moves. Raise RunFailed unless it succeeded."""
        handle = await self._handle(run_id)
        last = None
        polling, checked = True, -WORKER_CHECK_S
        loop = asyncio.get_running_loop()
        while True:
            desc = await handle.describe()
            if desc.status == _OPEN:
                if loop.time() - checked >= WORKER_CHECK_S:  # not at every look: one RPC more
                    polling, checked = await self.worker_polling(), loop.time()
                st = await self._open_status(handle, desc, polling)  # without a worker, says so instead of nothing
            else:
                st = await self._closed_status(handle, desc.status)
            snapshot = st.model_dump_json(exclude={"approval": {"since"}})
            if snapshot != last and on_change is not None:
                on_change(st)
            last = snapshot
            if desc.status != _OPEN:
                if st.status != "succeeded":
                    raise RunFailed(f"run {run_id} {st.status}: {st.error or st.status}")
                return st
            await asyncio.sleep(interval)

    def check_tenant_filter(self, tenant: str | None) -> None:
        """A tenant filter must name a tenant of katkit.yaml (when one is found; a typo would list nothing)."""
        if tenant is None:
            return
        try:
            config = self.config
        except NoConfigFound:  # no katkit.yaml on this machine (none named either): nothing to check it against
            return
        config.tenant(tenant)

    async def list(self, tenant: str | None = None, status: str | None = None, limit: int = 50) -> list[RunSummary]:
        self.check_tenant_filter(tenant)
        if status is not None and status not in RUN_STATUSES:
            raise UnknownName(f"unknown status {status!r}{did_you_mean(status, RUN_STATUSES)}; "
                              f"use one of {', '.join(RUN_STATUSES)}")
        parts = [f'WorkflowType = "{COMMIT_RUN}"']
        if tenant:
            parts.append(f'{SA_TENANT.name} = "{tenant}"')
        if status:
            parts.append(f'{SA_STATUS.name} = "{status}"')
        out = []
        async for wf in self.client.list_workflows(" AND ".join(parts), limit=limit):
            sa = wf.typed_search_attributes
            out.append(RunSummary(
                run_id=wf.id, tenant=sa.get(SA_TENANT) or "", repo=sa.get(SA_REPO) or "", sha=(sa.get(SA_SHA) or "")[:12],
                status=sa.get(SA_STATUS) or "", phase=sa.get(SA_PHASE) or "",
                started=wf.start_time.strftime("%Y-%m-%d %H:%M:%S") if wf.start_time else "",
            ))
        return out

    async def log_keys(self, run_id: str, phase: str | None = None,
                       wait: bool = False) -> tuple[RunStatus, list[tuple[str, str]]]:
        """The run's status and ``(label, log key)`` of each shard of each execution phase (or of ``phase``).

        With ``wait``, a phase name is not checked before the checkout has listed the phases."""
        handle = await self._handle(run_id)
        execution = (await handle.describe()).run_id
        st = await self.status(run_id)
        names = [p.name for p in st.phases]
        if phase is not None and phase not in names and (st.phases or st.status in TERMINAL_STATUSES or not wait):
            raise UnknownName(f"run {run_id} has no phase {phase!r} (phases: {', '.join(names) or 'none yet'})")
        keys = []
        for p in st.phases:
            if p.type != PhaseType.EXECUTION or (phase and p.name != phase) or p.state in ("pending", "skipped"):
                continue
            for s in p.shards:
                label = p.name if p.parallelism == 1 else f"{p.name}#{s.index}"
                keys.append((label, s.log_key or log_key(run_id, execution, p.name, s.index, s.generation)))
        return st, keys

    async def follow_logs(self, run_id: str, phase: str | None = None, follow: bool = False,
                          interval: float = 0.3) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(label, bytes)`` from the log store; with ``follow``, until the run (or ``phase``) has ended."""
        offsets: dict[str, int] = {}
        while True:
            st, keys = await self.log_keys(run_id, phase, wait=follow)
            settled = st.status in TERMINAL_STATUSES or (
                phase is not None and any(p.name == phase and p.ended_at is not None for p in st.phases))
            for label, key in keys:
                data = self.log_store.read(key, offsets.get(key, 0))
                if data:
                    offsets[key] = offsets.get(key, 0) + len(data)
                    yield label, data
            if not follow or settled:
                return
            await asyncio.sleep(interval)

    # -- promotion, rollback, locks ------------------------------------------------------------------------
    async def start_promotion(self, repo: str, sha: str, through: list[str], by: str | None = None) -> RunHandle:
        """The same sha through ``through`` in order; every tenant and its repo files are checked first."""
        if not through:
            raise BadInput("give the tenants to promote through, e.g. --through d-app,b-app,p-app")
        if len(set(through)) != len(through):
            raise BadInput(f"--through names a tenant twice ({', '.join(through)}); list each tenant once")
        inputs = [await asyncio.to_thread(self.prepare_run, t, repo, sha=sha, by=by) for t in through]
        full = inputs[0].sha
        promotion_id = f"promote-{repo}-{full[:12]}"
        existing = await self._is_open(promotion_id)
        await self.client.start_workflow(
            PROMOTION,
            PromotionInput(link=inputs[0].link, sha=full, tenants=[i.tenant for i in inputs], started_by=inputs[0].started_by),
            id=promotion_id, task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(SA_TENANT, through[0]), SearchAttributePair(SA_REPO, repo),
                SearchAttributePair(SA_SHA, full), SearchAttributePair(SA_PHASE, through[0]),
                SearchAttributePair(SA_STATUS, "running")]),
            static_summary=f"promote {repo}@{full[:12]} through {' -> '.join(through)}, by {inputs[0].started_by}",
        )
        return RunHandle(run_id=promotion_id, sha=full, url=self.settings.run_url(promotion_id), existing=existing)

    async def promotion_status(self, promotion_id: str) -> PromotionStatus:
        handle = self.client.get_workflow_handle(promotion_id, result_type=PromotionStatus)
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise UnknownName(f"no promotion {promotion_id!r}; list runs with 'katkit list'") from None
            raise
        if desc.status == _OPEN and not await self.worker_polling():  # a query would wait for a worker
            sa = desc.typed_search_attributes
            return PromotionStatus(promotion_id=promotion_id, repo=sa.get(SA_REPO) or "?", sha=sa.get(SA_SHA) or "?",
                                   started_by="?", status=sa.get(SA_STATUS) or "running", current=sa.get(SA_PHASE) or "",
                                   note=self.no_worker_note)
        if desc.status == _OPEN:
            return await handle.query(QUERY_STATUS, result_type=PromotionStatus, rpc_timeout=timedelta(seconds=10))
        found = await _closed_result(handle, PromotionStatus)
        if found is not None:
            return found
        return await handle.query(QUERY_STATUS, result_type=PromotionStatus, rpc_timeout=timedelta(seconds=5))

    async def wait_promotion(self, promotion_id: str, on_change=None, interval: float = 0.5) -> PromotionStatus:
        last = None
        while True:
            st = await self.promotion_status(promotion_id)
            snapshot = st.model_dump_json()
            if snapshot != last and on_change is not None:
                on_change(st)
            last = snapshot
            if st.status != "running":
                if st.status != "succeeded":
                    step = next((s for s in st.steps if s.status not in ("succeeded", "skipped", "pending")), None)
                    where = f" at {step.tenant}: {step.error}" if step else ""
                    raise RunFailed(f"promotion {promotion_id} {st.status}{where}")
                return st
            await asyncio.sleep(interval)

    # -- the ledger: each tenant service's deployments, kept in Temporal ------------------------------------
    async def ledger(self, tenant: str, service: str) -> LockState | None:
        """A tenant service's ledger, read from its DeployLock workflow (the same from every host); None when the
        service never deployed. (Old JSON histories are merged in by the workers that have them, at their start.)"""
        self.config.tenant(tenant)
        if not is_safe_name(service):
            raise BadInput(f"--service {service!r} is not a service name; a service Name is {NAME_RULE}")
        lock_id = deploy_lock_id(self.settings.task_queue, tenant, service)
        if not await self._is_open(lock_id):
            return None
        await self._need_worker()
        return await self._lock_state(lock_id)

    async def _need_worker(self) -> None:
        """A query or an update waits for a worker: one line at once when none polls."""
        if not await self.worker_polling():
            raise InfraError(self.no_worker_note)

    async def _lock_state(self, lock_id: str) -> LockState:
        """A DeployLock's state (lock and ledger), asked of a worker (see ``_need_worker``) within the deadline."""
        try:
            return await self.client.get_workflow_handle(lock_id).query(LOCK_STATE, result_type=LockState,
                                                                         rpc_timeout=QUERY_DEADLINE)
        except RPCError:
            raise InfraError(self.no_answer_note) from None

    async def deployments(self, tenant: str, service: str) -> list[DeploymentRecord]:
        """The service's deployments and rollbacks, oldest first (the last is what runs now)."""
        state = await self.ledger(tenant, service)
        return state.records if state is not None else []

    async def history(self, tenant: str, service: str | None = None) -> dict[str, list[DeploymentRecord]]:
        """Deployments of one service, or of every service of ``tenant`` with a ledger (or an old JSON history)."""
        if service is not None:
            return {service: await self.deployments(tenant, service)}
        self.config.tenant(tenant)
        names = {st.service for st in await self.locks(tenant)}
        found = {name: await self.deployments(tenant, name) for name in sorted(names)}
        return {name: records for name, records in found.items() if records}

    async def start_rollback(self, tenant: str, service: str, to_sha: str | None = None, by: str | None = None) -> RunHandle:
        """Redeploy the previous image (or the one deployed from ``to_sha``), through the tenant's gate and lock."""
        tenant_cfg = self.config.tenant(tenant)
        history = await self.deployments(tenant, service)
        if not history:
            raise BadInput(f"service {service!r} in tenant {tenant} has no deployment history; nothing to roll back to")
        current = history[-1]
        if to_sha:
            target = next((r for r in reversed(history) if r.sha.startswith(to_sha)), None)
            if target is None:
                shas = ", ".join(dict.fromkeys(r.sha[:12] for r in reversed(history)))
                raise BadInput(f"no deployment of {service} from a sha starting {to_sha!r} (deployed: {shas})")
            image, sha = target.image, target.sha
        else:
            if not current.previous_image:
                raise BadInput(f"{service} in {tenant} has no previous image; name one with --to SHA")
            image = current.previous_image
            sha = next((r.sha for r in reversed(history) if r.image == image), "")
        if image == current.image:
            raise BadInput(f"{image} is what runs now; pick another with --to SHA")
        link = next((lk for lk in self.config.links if lk.repo == current.repo), None) or LinkConfig(repo=service, url="-")
        inp = CommitRunInput(tenant=tenant_cfg, link=link, sha=sha or "0" * 40, ref=f"rollback to {image}",
                             started_by=by or getpass.getuser(), rollback=RollbackSpec(service=service, image=image, sha=sha))
        suffix = hashlib.sha256(image.encode()).hexdigest()[:8]
        return await self.start_prepared(inp, run_id=f"rollback-{tenant}-{service}-{suffix}")

    async def locks(self, tenant: str | None = None) -> list[LockState]:
        self.check_tenant_filter(tenant)
        query = f'WorkflowType = "{DEPLOY_LOCK}" AND ExecutionStatus = "Running" AND TaskQueue = "{self.settings.task_queue}"'
        out, asked = [], False
        async for wf in self.client.list_workflows(query):
            if not asked:
                await self._need_worker()  # once, before the first query
                asked = True
            st = await self._lock_state(wf.id)
            if tenant is None or st.tenant == tenant:
                out.append(st)
        return sorted(out, key=lambda s: (s.tenant, s.service))
