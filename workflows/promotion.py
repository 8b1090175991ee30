"""``Promotion``: the same sha through several tenants in order (dev -> beta -> prod), each a child CommitRun
with that tenant's phases and gate. A failed, rejected or timed-out tenant stops the promotion;
cancelling the promotion cancels the running child, which tears its builders down.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from katkit.models import CommitRunInput, PromotionInput, PromotionStatus, PromotionStep, RunStatus
    from katkit.names import PROMOTION, QUERY_STATUS, SA_PHASE, SA_STATUS, SA_TENANT, commit_run_id
    from katkit.states import ErrorType, State
    from katkit.temporal import run_search_attributes
    from workflows.commit_run import CommitRun
    from workflows.details import promotion_details


@workflow.defn(name=PROMOTION)
class Promotion:
    @workflow.init
    def __init__(self, inp: PromotionInput) -> None:
        self._status = PromotionStatus(
            promotion_id=workflow.info().workflow_id, repo=inp.link.repo, sha=inp.sha, started_by=inp.started_by,
            steps=[PromotionStep(tenant=t.name, run_id=commit_run_id(t.name, inp.link.repo, inp.sha)) for t in inp.tenants],
        )

    @workflow.run
    async def run(self, inp: PromotionInput) -> PromotionStatus:
        for tenant, step in zip(inp.tenants, self._status.steps):
            self._status.current = tenant.name
            step.status = State.RUNNING
            workflow.upsert_search_attributes([SA_TENANT.value_set(tenant.name), SA_PHASE.value_set(tenant.name),
                                               SA_STATUS.value_set(State.RUNNING.value)])
            self._show()
            try:
                result: RunStatus = await workflow.execute_child_workflow(
                    CommitRun.run,
                    CommitRunInput(tenant=tenant, link=inp.link, sha=inp.sha, ref=f"promotion {self._status.promotion_id}",
                                   started_by=inp.started_by),
                    id=step.run_id, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    search_attributes=run_search_attributes(tenant.name, inp.link.repo, inp.sha, "checkout"),
                    static_summary=f"{inp.link.repo}@{inp.sha[:12]} -> {tenant.name}, step of {self._status.promotion_id}",
                )
            except (asyncio.CancelledError, CancelledError):
                step.status = State.CANCELLED
                self._stop(State.CANCELLED)
                raise
            except WorkflowAlreadyStartedError:
                step.status, step.error = State.FAILED, f"a run of this sha in {tenant.name} is already open: {step.run_id}"
                self._stop(State.FAILED)
                raise ApplicationError(step.error, self._status, type=ErrorType.PROMOTION_FAILED, non_retryable=True) from None
            except ChildWorkflowError as exc:
                step.status, step.error = self._child_outcome(exc)
                self._stop(step.status)
                raise ApplicationError(f"promotion stopped at {tenant.name}: {step.status}: {step.error}", self._status,
                                       type=ErrorType.PROMOTION_FAILED, non_retryable=True) from None
            step.status = State.SUCCEEDED
            step.image = result.deployed.image if result.deployed else ""
        self._status.current = ""
        self._status.status = State.SUCCEEDED
        workflow.upsert_search_attributes([SA_STATUS.value_set(State.SUCCEEDED.value)])
        self._show()
        return self._status

    def _show(self) -> None:
        """The promotion's page: its steps, each linked to its run (current details: no history event)."""
        workflow.set_current_details(promotion_details(self._status, workflow.info().namespace))

    @staticmethod
    def _child_outcome(exc: ChildWorkflowError) -> tuple[State, str]:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            details = cause.details[0]
            st = details if isinstance(details, RunStatus) else RunStatus.model_validate(details)
            return st.status, st.error or cause.message
        if isinstance(cause, CancelledError):
            return State.CANCELLED, "the run was cancelled"
        return State.FAILED, str(cause or exc)

    def _stop(self, status: State) -> None:
        self._status.status = status
        for step in self._status.steps:
            if step.status == State.PENDING:
                step.status = State.SKIPPED
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])
        self._show()

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> PromotionStatus:
        return self._status
