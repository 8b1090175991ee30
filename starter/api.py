"""The starter API: connect, start a run, approve, reject, cancel, status, logs, list; promotions, rollbacks,
ledgers and locks (``starter.promote``, ``starter.ledger``).

    async with await Katkit.connect() as kk:          # settings from KATKIT_* env, katkit.yaml found as usual
        handle = await kk.start_run("d-taskrunner", "taskrunner", branch="main", by="alice")
        status = await kk.wait(handle.run_id)
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus as ExecStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from katkit.config import KatkitConfig, Settings, load_settings
from katkit.errors import BadInput, InfraError, RunFailed, UnknownName, did_you_mean
from katkit.models import Decision, DecisionInput, PhaseType, PullInfo, RunStatus
from katkit.names import COMMIT_RUN, QUERY_STATUS, SA_PHASE, SA_REPO, SA_SHA, SA_STATUS, SA_TENANT, UPDATE_DECIDE, log_key
from katkit.states import ENDED, RUN_STATES, TERMINAL, State
from katkit.temporal import connect
from starter.base import QUERY_DEADLINE, RunHandle, closed_result, watch
from starter.ledger import LedgerCalls
from starter.promote import PromotionCalls

__all__ = ["Katkit", "RunHandle", "RunSummary"]

_OPEN = ExecStatus.RUNNING
WORKER_CHECK_S = 5.0  # how often ``wait`` asks again whether a worker polls


def _ended(status: ExecStatus | None) -> State:
    """How a closed workflow ended, as the server says."""
    return {ExecStatus.COMPLETED: State.SUCCEEDED, ExecStatus.CANCELED: State.CANCELLED,
            ExecStatus.TERMINATED: State.TERMINATED}.get(status, State.FAILED) if status else State.FAILED


@dataclass
class RunSummary:
    run_id: str
    tenant: str
    repo: str
    sha: str
    status: str
    phase: str
    started: str


class Katkit(LedgerCalls, PromotionCalls):
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

    # -- starting ------------------------------------------------------------------------------------------
    async def start_run(self, tenant: str, repo: str, *, sha: str | None = None, branch: str | None = None,
                        pr: int | None = None, by: str | None = None, ref: str | None = None) -> RunHandle:
        inp = await asyncio.to_thread(self.prepare_run, tenant, repo, sha=sha, branch=branch, pr=pr, by=by, ref=ref)
        return await self.start_prepared(inp)

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
            latest: dict[tuple[str, str], tuple[datetime, str]] = {}
            async for wf in self.client.list_workflows(f'{SA_REPO.name}="{repo}" AND {SA_SHA.name} IN ({shas})'):
                sa = wf.typed_search_attributes
                key = (sa.get(SA_SHA) or "", sa.get(SA_TENANT) or "")
                if key not in latest or wf.start_time > latest[key][0]:
                    latest[key] = (wf.start_time, sa.get(SA_STATUS) or "")
            for p in pulls:
                p.runs = {tenant: status for (sha, tenant), (_, status) in sorted(latest.items()) if sha == p.sha}
        return pulls

    # -- the gate ----------------------------------------------------------------------------------------
    async def approve(self, run_id: str, by: str, comment: str = "") -> Decision:
        return await self._decide(run_id, "approve", DecisionInput(by=by, comment=comment))

    async def reject(self, run_id: str, by: str, reason: str = "") -> Decision:
        return await self._decide(run_id, "reject", DecisionInput(by=by, reason=reason))

    async def _decide(self, run_id: str, kind: str, inp: DecisionInput) -> Decision:
        handle = await self._handle(run_id)
        await self._need_worker()
        try:
            decision: Decision = await handle.execute_update(UPDATE_DECIDE, args=[kind, inp], result_type=Decision,
                                                             rpc_timeout=2 * QUERY_DEADLINE)
            return decision
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
            ended = status if status in TERMINAL else _ended(desc.status)
            raise BadInput(f"run {run_id} already ended ({ended}); nothing to cancel")
        await handle.cancel()

    # -- watching ----------------------------------------------------------------------------------------
    async def status(self, run_id: str) -> RunStatus:
        """The run's status: queried while it runs, read from its result or failure once it has closed.

        With no worker polling, an open run's status comes from its search attributes and memo (a query would
        wait for a worker), with ``note`` saying so."""
        handle = self.client.get_workflow_handle(run_id, result_type=RunStatus)
        desc = await self._describe(handle)
        if desc.status != _OPEN:
            return await self._closed_status(handle, desc.status)
        return await self._open_status(handle, desc, await self.worker_polling())

    async def _open_status(self, handle: WorkflowHandle[Any, RunStatus], desc: WorkflowExecutionDescription,
                           polling: bool) -> RunStatus:
        """An open run's status: its query when a worker polls and answers in time, else what the server alone
        knows (search attributes, memo, start time) with ``note`` saying why."""
        if polling:
            try:
                answer: RunStatus = await handle.query(QUERY_STATUS, result_type=RunStatus, rpc_timeout=QUERY_DEADLINE)
                return answer
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
                         started_by=str(memo.get("started_by") or "?"), status=State(sa.get(SA_STATUS) or State.RUNNING),
                         phase=sa.get(SA_PHASE) or "", started_at=desc.start_time, error=error, note=note)

    async def _closed_status(self, handle: WorkflowHandle[Any, RunStatus], status: ExecStatus | None) -> RunStatus:
        try:
            found = await closed_result(handle, RunStatus)
            if found is not None:
                return found
            # cancelled or terminated: the last state the workflow reported, ended as the server says
            st: RunStatus = await handle.query(QUERY_STATUS, result_type=RunStatus, rpc_timeout=timedelta(seconds=5))
        except Exception as exc:  # noqa: BLE001 - no worker to answer: say what history says
            st = RunStatus(run_id=handle.id, tenant="?", env="?", repo="?", sha="?", started_by="?", error=str(exc))
        if st.status not in TERMINAL:  # terminated mid-run (no katkit code ran to say so)
            st.status = _ended(status)
        return st

    async def wait(self, run_id: str, on_change: Callable[[RunStatus], object] | None = None,
                   interval: float = 0.3) -> RunStatus:
        """Wait for the run to end; call ``on_change(status)`` whenever it moves. Raise RunFailed unless it succeeded."""
        handle = await self._handle(run_id)
        polling, checked = True, -WORKER_CHECK_S
        loop = asyncio.get_running_loop()

        async def step() -> tuple[RunStatus, bool]:
            nonlocal polling, checked
            desc = await handle.describe()
            if desc.status != _OPEN:
                return await self._closed_status(handle, desc.status), True
            if loop.time() - checked >= WORKER_CHECK_S:  # not at every look: one RPC more
                polling, checked = await self.worker_polling(), loop.time()
            return await self._open_status(handle, desc, polling), False  # without a worker, says so

        st = await watch(step, on_change, interval, exclude={"approval": {"since"}})
        if st.status != State.SUCCEEDED:
            raise RunFailed(f"run {run_id} {st.status}: {st.error or st.status}")
        return st

    async def list(self, tenant: str | None = None, status: str | None = None, limit: int = 50) -> list[RunSummary]:
        self.check_tenant_filter(tenant)
        if status is not None and status not in RUN_STATES:
            raise UnknownName(f"unknown status {status!r}{did_you_mean(status, RUN_STATES)}; "
                              f"use one of {', '.join(RUN_STATES)}")
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
                       wait: bool = False) -> tuple[RunStatus, builtins.list[tuple[str, str]]]:
        """The run's status and ``(label, log key)`` of each shard of each execution phase (or of ``phase``).

        With ``wait``, a phase name is not checked before the checkout has listed the phases."""
        handle = await self._handle(run_id)
        execution = (await handle.describe()).run_id or ""
        st = await self.status(run_id)
        names = [p.name for p in st.phases]
        if phase is not None and phase not in names and (st.phases or st.status in ENDED or not wait):
            raise UnknownName(f"run {run_id} has no phase {phase!r} (phases: {', '.join(names) or 'none yet'})")
        keys = []
        for p in st.phases:
            if p.type != PhaseType.EXECUTION or (phase and p.name != phase) or p.state in (State.PENDING, State.SKIPPED):
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
            settled = st.status in ENDED or (
                phase is not None and any(p.name == phase and p.ended_at is not None for p in st.phases))
            for label, key in keys:
                data = self.log_store.read(key, offsets.get(key, 0))
                if data:
                    offsets[key] = offsets.get(key, 0) + len(data)
                    yield label, data
            if not follow or settled:
                return
            await asyncio.sleep(interval)
