"""The starter's calls on promotions: the same sha through several tenants in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from katkit.errors import BadInput, RunFailed
from katkit.models import PromotionInput, PromotionStatus
from katkit.names import PROMOTION, QUERY_STATUS, SA_PHASE, SA_REPO, SA_SHA, SA_STATUS
from katkit.states import State
from katkit.temporal import is_open, run_search_attributes
from starter.base import KatkitBase, RunHandle, closed_result, watch


class PromotionCalls(KatkitBase):
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
            return running
        found = await closed_result(handle, PromotionStatus)
        if found is not None:
            return found
        last: PromotionStatus = await handle.query(QUERY_STATUS, result_type=PromotionStatus, rpc_timeout=timedelta(seconds=5))
        return last  # cancelled or terminated: the last state it reported

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
