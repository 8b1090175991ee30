"""The starter API: connect, start a run, approve, reject, cancel, wait, list; a run's status (``starter.status``), its
logs (``starter.logs``); promotions (``starter.promote``), rollbacks, ledgers and locks (``starter.ledger``).

    async with await Katkit.connect() as kk:          # settings from KATKIT_* env, katkit.yaml found as usual
        handle = await kk.start_run("d-taskrunner", "taskrunner", branch="main", by="alice")
        status = await kk.wait(handle.run_id)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from katkit.config import KatkitConfig, Settings, load_settings
from katkit.errors import BadInput, InfraError, RunFailed, UnknownName, did_you_mean
from katkit.models import Decision, DecisionInput, DecisionProof, PullInfo, RunStatus
from katkit.names import COMMIT_RUN, SA_PHASE, SA_REPO, SA_SHA, SA_STATUS, SA_TENANT, UPDATE_DECIDE
from katkit.states import RUN_STATES, TERMINAL, State
from katkit.temporal import connect
from starter.audit import AuditCalls
from starter.base import QUERY_DEADLINE, RunHandle, watch
from starter.freezes import FreezeCalls
from starter.retry import RetryCalls
from starter.ledger import LedgerCalls
from starter.logs import LogCalls
from starter.promote import PromotionCalls
from starter.status import OPEN, ended_as

__all__ = ["Katkit", "RunHandle", "RunSummary"]

WORKER_CHECK_S = 5.0  # how often ``wait`` asks again whether a worker polls


@dataclass
class RunSummary:
    run_id: str
    tenant: str
    repo: str
    sha: str
    """The full 40-character sha."""
    status: str
    phase: str
    started: datetime | None
    """When the run started (UTC, with its zone)."""


class Katkit(LogCalls, LedgerCalls, PromotionCalls, AuditCalls, FreezeCalls, RetryCalls):
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
                        pr: int | None = None, by: str | None = None, ref: str | None = None,
                        untrusted: bool = False) -> RunHandle:
        """Start a run (``untrusted``: code from a fork's pull request, which gets no secrets and no GitHub token)."""
        inp = await asyncio.to_thread(self.prepare_run, tenant, repo, sha=sha, branch=branch, pr=pr, by=by, ref=ref,
                                      untrusted=untrusted)
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
    async def approve(self, run_id: str, by: str, comment: str = "", key: str | None = None) -> Decision:
        """Approve; with ``key`` (an SSH private key file, or a public one whose private half is in ssh-agent) signed."""
        inp = DecisionInput(by=by, comment=comment)
        return await self._decide(run_id, "approve", await self._signed(run_id, "approve", inp, comment, key))

    async def reject(self, run_id: str, by: str, reason: str = "", key: str | None = None) -> Decision:
        inp = DecisionInput(by=by, reason=reason)
        return await self._decide(run_id, "reject", await self._signed(run_id, "reject", inp, reason, key))

    async def _signed(self, run_id: str, kind: str, inp: DecisionInput, text: str, key: str | None) -> DecisionInput:
        """The decision with a proof: its run, sha, tenant, kind, by, text and now, signed with ``key``."""
        if key is None:
            return inp
        from datetime import timezone

        from katkit.proof import ProofError, decision_message, sign_with_ssh_keygen, signer_fingerprint

        st = await self.status(run_id)
        execution = (await self._describe(self.client.get_workflow_handle(run_id))).run_id or ""  # this attempt only
        now = datetime.now(timezone.utc)
        message = decision_message(run_id=st.run_id, execution=execution, sha=st.sha, tenant=st.tenant, kind=kind,
                                   by=inp.by, text=text, signed_at=now)
        try:
            signature = await asyncio.to_thread(sign_with_ssh_keygen, key, message)
        except ProofError as exc:
            raise BadInput(str(exc)) from None
        inp.proof = DecisionProof(signature=signature, signed_at=now, key=signer_fingerprint(signature))
        return inp

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
        if desc.status != OPEN:
            status = desc.typed_search_attributes.get(SA_STATUS)  # how the run ended; a terminated one never said
            ended = status if status in TERMINAL else ended_as(desc.status)
            raise BadInput(f"run {run_id} already ended ({ended}); nothing to cancel")
        await handle.cancel()

    # -- watching ----------------------------------------------------------------------------------------
    async def wait(self, run_id: str, on_change: Callable[[RunStatus], object] | None = None,
                   interval: float = 0.3) -> RunStatus:
        """Wait for the run to end; call ``on_change(status)`` whenever it moves. Raise RunFailed unless it succeeded."""
        handle = await self._handle(run_id)
        polling, checked = True, -WORKER_CHECK_S
        loop = asyncio.get_running_loop()

        async def step() -> tuple[RunStatus, bool]:
            nonlocal polling, checked
            desc = await handle.describe()
            if desc.status != OPEN:
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
                run_id=wf.id, tenant=sa.get(SA_TENANT) or "", repo=sa.get(SA_REPO) or "", sha=sa.get(SA_SHA) or "",
                status=sa.get(SA_STATUS) or "", phase=sa.get(SA_PHASE) or "", started=wf.start_time,
            ))
        return out
