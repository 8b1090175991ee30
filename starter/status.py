"""A run's status as the starter tells it: queried while the run is open and a worker answers, from what the server
alone knows when none does, and from the result (or the failure's details) once it has closed. Runs, their logs and
promotions (a step shows its run's state) all read it here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus as ExecStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from katkit.models import RunStatus
from katkit.errors import UnknownName
from katkit.names import COMMIT_RUN, QUERY_STATUS, SA_PHASE, SA_REPO, SA_SHA, SA_STATUS, SA_TENANT
from katkit.states import TERMINAL, State
from starter.base import QUERY_DEADLINE, KatkitBase, closed_result

OPEN = ExecStatus.RUNNING


def ended_as(status: ExecStatus | None) -> State:
    """How a closed workflow ended, as the server says."""
    return {ExecStatus.COMPLETED: State.SUCCEEDED, ExecStatus.CANCELED: State.CANCELLED,
            ExecStatus.TERMINATED: State.TERMINATED}.get(status, State.FAILED) if status else State.FAILED


class StatusCalls(KatkitBase):
    async def status(self, run_id: str, attempt: int | None = None) -> RunStatus:
        """The run's status: queried while it runs, read from its result or failure once it has closed.

        With no worker polling, an open run's status comes from its search attributes and memo (a query would
        wait for a worker), with ``note`` saying so."""
        if attempt is not None:
            return await self.attempt_status(run_id, attempt)
        handle = self.client.get_workflow_handle(run_id, result_type=RunStatus)
        desc = await self._describe(handle)
        if desc.status != OPEN:
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
            st.status = ended_as(status)
        return st

    async def executions(self, run_id: str) -> list[str]:
        """The run's executions (Temporal run ids), oldest first: attempt N is the Nth."""
        found = [(wf.start_time, wf.run_id) async for wf in self.client.list_workflows(
            f'WorkflowId = "{run_id}" AND WorkflowType = "{COMMIT_RUN}"')]
        return [execution for _, execution in sorted(found)]

    async def attempt_handle(self, run_id: str, attempt: int) -> WorkflowHandle[Any, RunStatus]:
        """The handle of attempt ``attempt`` (from 1) of the run; one line of bad input when there is no such one."""
        await self._handle(run_id)
        executions = await self.executions(run_id)
        if not 1 <= attempt <= len(executions):
            raise UnknownName(f"run {run_id} has no attempt {attempt} (attempts: 1 to {len(executions)})"
                              if executions else f"run {run_id} has no attempts listed yet; try again in a moment")
        return self.client.get_workflow_handle(run_id, run_id=executions[attempt - 1], result_type=RunStatus)

    async def attempt_status(self, run_id: str, attempt: int) -> RunStatus:
        """The status of attempt ``attempt`` of the run (its result once it has ended; its query while it runs)."""
        handle = await self.attempt_handle(run_id, attempt)
        desc = await handle.describe()
        if desc.status != OPEN:
            st = await self._closed_status(handle, desc.status)
        else:
            st = await self._open_status(handle, desc, await self.worker_polling())
        st.attempt = attempt
        return st
