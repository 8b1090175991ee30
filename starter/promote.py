"""The starter's calls on promotions: the same sha through several tenants in order. A promotion's running step shows
its run's own state (``awaiting_approval``, ``deploying``), and a decision given to a promotion goes to the step
whose run awaits one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from katkit.errors import BadInput, InfraError, RunFailed, UnknownName
from katkit.models import PromotionInput, PromotionStatus, PromotionStep
from katkit.names import PROMOTION, QUERY_STATUS, SA_PHASE, SA_REPO, SA_SHA, SA_STATUS
from katkit.states import LIVE, State
from katkit.temporal import describe_or_none, is_open, run_search_attributes
from starter.base import RunHandle, closed_result, watch
from starter.status import StatusCalls


class PromotionCalls(StatusCalls):
    async def start_promotion(self, repo: str, sha: str, through: list[str], by: str | None = None) -> RunHandle:
        """The same sha through ``through`` in order; every tenant and its repo files are checked first."""
        if not through:
            raise BadInput("give the tenants to promote through, e.g. --through d-app,b-app,p-app")
        if len(set(through)) != len(through):
            raise BadInput(f"--through names a tenant twice ({', '.join(through)}); list each tenant once")
        inputs = [await asyncio.to_thread(self.prepare_run, t, repo, sha=sha, by=by) for t in through]
        first = inputs[0]
        assert first.link is not None
        promotion_id = f"promote-{repo}-{first.sha[:12]}"
        existing = await is_open(self.client, promotion_id)
        await self.client.start_workflow(
            PROMOTION,
            PromotionInput(link=first.link, sha=first.sha, tenants=[i.tenant for i in inputs], started_by=first.started_by),
            id=promotion_id, task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=run_search_attributes(through[0], repo, first.sha, through[0]),
            static_summary=f"promote {repo}@{first.sha[:12]} through {' -> '.join(through)}, by {first.started_by}",
        )
        return RunHandle(run_id=promotion_id, sha=first.sha, url=self.settings.run_url(promotion_id), existing=existing)

    async def promotion_status(self, promotion_id: str) -> PromotionStatus:
        handle = self.client.get_workflow_handle(promotion_id, result_type=PromotionStatus)
        desc = await self._describe(handle, "promotion")
        if desc.status == WorkflowExecutionStatus.RUNNING:
            if not await self.worker_polling():  # a query would wait for a worker
                sa = desc.typed_search_attributes
                return PromotionStatus(promotion_id=promotion_id, repo=sa.get(SA_REPO) or "?", sha=sa.get(SA_SHA) or "?",
                                       started_by="?", status=State(sa.get(SA_STATUS) or State.RUNNING),
                                       current=sa.get(SA_PHASE) or "", note=self.no_worker_note)
            running: PromotionStatus = await handle.query(QUERY_STATUS, result_type=PromotionStatus,
                                                          rpc_timeout=timedelta(seconds=10))
            await self._show_run_state(running)
            return running
        found = await closed_result(handle, PromotionStatus)
        if found is not None:
            return found
        last: PromotionStatus = await handle.query(QUERY_STATUS, result_type=PromotionStatus, rpc_timeout=timedelta(seconds=5))
        return last  # cancelled or terminated: the last state it reported

    async def _show_run_state(self, st: PromotionStatus) -> None:
        """The running step says what its run does now (e.g. ``awaiting_approval``), not only that it runs."""
        for step in st.steps:
            if step.status == State.RUNNING:
                try:
                    run = await self.status(step.run_id)
                except (UnknownName, RPCError):  # its run has not started yet, or has just closed: the step says enough
                    continue
                if run.status in LIVE:
                    step.status = run.status

    async def is_promotion(self, workflow_id: str) -> bool:
        desc = await describe_or_none(self.client, workflow_id)
        return desc is not None and desc.workflow_type == PROMOTION

    async def awaiting_step(self, promotion_id: str) -> PromotionStep:
        """The step of the promotion whose run awaits a decision now; BadInput when none does."""
        st = await self.promotion_status(promotion_id)
        if st.note:  # no worker to ask
            raise InfraError(st.note)
        step = next((s for s in st.steps if s.status == State.AWAITING_APPROVAL), None)
        if step is None:
            where = next((f"{s.tenant} is {s.status}" for s in st.steps if s.status in LIVE), f"it is {st.status}")
            raise BadInput(f"promotion {promotion_id} has no run awaiting a decision ({where})")
        return step

    async def wait_promotion(self, promotion_id: str, on_change: Callable[[PromotionStatus], object] | None = None,
                             interval: float = 0.5) -> PromotionStatus:
        async def step() -> tuple[PromotionStatus, bool]:
            st = await self.promotion_status(promotion_id)
            return st, st.status != State.RUNNING

        st = await watch(step, on_change, interval)
        if st.status != State.SUCCEEDED:
            stopped = next((s for s in st.steps if s.status not in (State.SUCCEEDED, State.SKIPPED, State.PENDING)), None)
            where = f" at {stopped.tenant}: {stopped.error}" if stopped else ""
            raise RunFailed(f"promotion {promotion_id} {st.status}{where}")
        return st
