"""The deployment phase of a ``CommitRun``: the approval gate, the wait timer, freezes, the deploy through the
tenant service's lock, and the automatic rollback when a phase after it fails; and the phase transitions every
phase uses (status, search attributes and memo, GitHub, the run's page).

A part of ``CommitRun`` (a base class of it, deterministic like it): the workflow's handlers and its story stay in
``workflows/commit_run.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.deploy import DeployActivities
    from katkit.models import (
        CommitRunInput,
        DeployInput,
        DeployResult,
        FreezeCheck,
        FreezeCheckInput,
        PhaseState,
        RunPlan,
        RunStatus,
    )
    from katkit.platforms import RecordedDecision
    from katkit.states import TERMINAL, DeployKind, ErrorType, Outcome, State, run_state_of
    from workflows.gate import ApprovalGate
    from workflows.github import GitHubReporter
    from workflows.notifier import WebhookNotifier
    from workflows.options import DEPLOY_HEARTBEAT_TIMEOUT, DEPLOY_TIMEOUT, INFRA_RETRY, failure_text, is_error
    from workflows.visibility import RunVisibility

AUTOROLLBACK_PATCH = "katkit-autorollback-1"  # on_post_deploy_failure: rollback puts the previous image back
FREEZE_PATCH = "katkit-freeze-1"  # a deploy waits while the tenant is frozen (or fails: on_freeze: fail)
FREEZE_LOCAL_PATCH = "katkit-freeze-local-1"  # the freeze check is a local activity (the gate -> deploy path was ~25 ms longer)
FREEZE_CHECK_TIMEOUT = timedelta(seconds=30)
MIN_FREEZE_WAIT = timedelta(seconds=1)
AUTO_ROLLBACK_ACTOR = "katkit"  # who the ledger says started an automatic rollback


class RunFailure(Exception):
    """Internal: a phase failed or the gate said no; the message is the one line the user sees."""

    def __init__(self, message: str, status: State = State.FAILED) -> None:
        super().__init__(message)
        self.status = status


class DeploymentSteps:
    """What ``CommitRun`` does in its deployment phase, and its phase transitions."""

    _inp: CommitRunInput
    _status: RunStatus
    _gate: ApprovalGate
    _visibility: RunVisibility
    _webhooks: WebhookNotifier
    _github: GitHubReporter
    _gates_patch: bool
    _freeze_changed: bool

    def _deploy_input(self, plan: RunPlan) -> DeployInput:
        """What the deployment phase deploys: the sha's image (servicedescription.js), or the rollback's image."""
        inp, rollback = self._inp, self._inp.rollback
        if rollback is not None:
            kind, service, image, desc = DeployKind.ROLLBACK, rollback.service, rollback.image, None
        else:
            assert plan.service is not None, "a deployment phase has a service description (checked at checkout)"
            kind, service, image, desc = DeployKind.DEPLOY, plan.service.name, plan.service.image_for(plan.sha), plan.service
        return DeployInput(run_id=self._status.run_id, execution=workflow.info().run_id, tenant=inp.tenant, kind=kind,
                           service=service, image=image, sha=plan.sha, repo=inp.repo, description=desc,
                           started_by=inp.started_by, approved_by=list(self._status.approval.approved_by),
                           attempt=inp.attempt,
                           approvals=[RecordedDecision(by=d.by, at=d.at, comment=d.text, verified_by=d.verified_by)
                                      for d in self._status.approval.decisions if d.accepted and d.kind == "approve"],
                           freeze_overrides=[RecordedDecision(by=o.by, at=o.at, comment=o.text)
                                             for o in self._status.freeze.overrides])

    async def _deploy(self, state: PhaseState, plan: RunPlan) -> None:
        if self._inp.untrusted and not self._inp.tenant.deploy_fork_prs:  # a fork's code never deploys by itself
            self._end_phase(state, State.SKIPPED, "not deployed: a pull request from a fork deploys nothing "
                                                  f"(tenant {self._inp.tenant.name} has deploy_fork_prs: false)")
            return
        policy = self._inp.tenant.approval
        opened = workflow.now()
        if policy.required:
            await self._await_approval(state)
        if self._gates_patch and policy.wait_timer:  # a soak: no deploy before it has passed since the gate opened
            not_before = opened + policy.wait_timer
            self._status.approval.deploy_not_before = not_before
            if workflow.now() < not_before:
                self._start_phase(state, State.WAIT_TIMER)
                await workflow.sleep(not_before - workflow.now())
        if workflow.patched(FREEZE_PATCH):
            await self._respect_freezes(state)
        self._start_phase(state, State.DEPLOYING)
        deploy = self._deploy_input(plan)
        try:
            result = await self._run_deploy(deploy, f"{deploy.kind} {deploy.service} -> {deploy.image}")
        except ActivityError as exc:
            cause, superseded = failure_text(exc), is_error(exc, ErrorType.SUPERSEDED)
            self._end_phase(state, State.CANCELLED if superseded else State.FAILED, cause)
            self._status.error = cause
            if not superseded:
                self._webhooks.send("failed", error=cause)
            raise
        self._status.deployed = result
        self._end_phase(state, State.SUCCEEDED, f"deployed {result.image}")
        self._webhooks.send("rolled_back" if deploy.kind == DeployKind.ROLLBACK else "deployed", image=result.image,
                            previous_image=result.previous_image)

    @staticmethod
    async def _run_deploy(deploy: DeployInput, summary: str) -> DeployResult:
        """The deploy activity: the service's lock, the platform, the ledger; a cancel waits for it to let go."""
        result: DeployResult = await workflow.execute_activity_method(
            DeployActivities.deploy, deploy,
            start_to_close_timeout=DEPLOY_TIMEOUT, heartbeat_timeout=DEPLOY_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED, summary=summary)
        return result

    async def _respect_freezes(self, state: PhaseState) -> None:
        """No deploy while the tenant is frozen (a recurring window of its config, or ``katkit freeze``): wait until the
        freeze ends or is lifted (then look again), or fail at once with ``on_freeze: fail``; an approver's override
        (``katkit approve --override-freeze``) lets this run deploy through it."""
        freeze, began, waited = self._status.freeze, workflow.now(), False
        while not freeze.overrides:
            self._freeze_changed = False  # before asking: an unfreeze while the check runs wakes the wait below
            check_input = FreezeCheckInput(tenant=self._inp.tenant, run_id=self._status.run_id)
            if workflow.patched(FREEZE_LOCAL_PATCH):  # on this worker, in this workflow task: no round trip
                check: FreezeCheck = await workflow.execute_local_activity_method(
                    DeployActivities.freeze_check, check_input, start_to_close_timeout=FREEZE_CHECK_TIMEOUT,
                    retry_policy=INFRA_RETRY, summary="freeze check")
            else:
                check = await workflow.execute_activity_method(
                    DeployActivities.freeze_check, check_input,
                    start_to_close_timeout=FREEZE_CHECK_TIMEOUT, retry_policy=INFRA_RETRY, summary="freeze check")
            found = check.freeze
            if found is None:
                break
            freeze.frozen_until, freeze.reason, freeze.by = found.until, found.reason, found.by
            what = (f"frozen until {found.until:%Y-%m-%d %H:%M} UTC"
                    + (f" by {found.by}" if found.by else f" (window {found.window})")
                    + (f": {found.reason}" if found.reason else ""))
            if self._inp.tenant.on_freeze == "fail":
                freeze.frozen_until = None
                self._end_phase(state, State.FAILED, f"{what} (on_freeze: fail)")
                self._webhooks.send("failed", error=f"{what} (on_freeze: fail)")
                raise RunFailure(f"not deployed: {self._inp.tenant.name} is {what} (on_freeze: fail)")
            if not waited:
                self._webhooks.send("frozen", until=found.until.isoformat(), reason=found.reason, by=found.by)
            waited = True
            state.message = what
            self._start_phase(state, State.FROZEN)
            self._visibility.memo()
            try:
                await workflow.wait_condition(lambda: self._freeze_changed or bool(freeze.overrides),
                                              timeout=max(found.until - workflow.now(), MIN_FREEZE_WAIT))
            except asyncio.TimeoutError:
                pass  # the freeze has ended: look again (another may have begun)
        freeze.frozen_until = None
        if waited:
            freeze.waited_s = (workflow.now() - began).total_seconds()
            state.message = ""

    def _override_refusal(self, by: str) -> str:
        """Why ``by`` may not let this run deploy through a freeze ('' when they may): the tenant's approvers may."""
        policy, st = self._inp.tenant.approval, self._status
        names = policy.approvers
        if not by:
            return "name who overrides the freeze (--by)"
        if policy.require_proof:  # an override cannot be signed (yet): a name alone proves nothing here
            return (f"tenant {st.tenant} requires signed decisions and a freeze override cannot be signed; "
                    f"lift the freeze instead (katkit unfreeze --tenant {st.tenant} --by <you>)")
        if st.status in TERMINAL or st.deployed is not None:
            return f"run {st.run_id} has {'deployed' if st.deployed else 'ended'} already; no freeze to override"
        if names and by not in names:
            return f"{by} is not an approver of tenant {st.tenant} (approvers: {', '.join(names)})"
        if not names and by == st.started_by and not policy.allow_self_approval:
            return f"{by} started the run and may not override its freeze"
        if any(o.by == by for o in st.freeze.overrides):
            return f"{by} has overridden the freeze of this run already"
        return ""


    def _rolls_back_after(self, failure: RunFailure) -> bool:
        """Whether a failed phase is to be answered by redeploying what ran before this run's deploy (the tenant's
        ``on_post_deploy_failure: rollback``); runs recorded before the feature never get here with the option set."""
        deployed = self._status.deployed
        return (failure.status == State.FAILED and deployed is not None and deployed.previous_image is not None
                and self._inp.tenant.on_post_deploy_failure == "rollback" and workflow.patched(AUTOROLLBACK_PATCH))

    async def _auto_rollback(self, failed: PhaseState, why: str) -> str:
        """Put the previous image back through the same deploy lock, with no new approval (recorded as by katkit, with
        the failing phase); return the run's error line, which says what now runs."""
        deployed = self._status.deployed
        assert deployed is not None and deployed.previous_image is not None
        image = deployed.previous_image
        self._visibility.set(status=State.DEPLOYING, phase=f"{failed.name}: {DeployKind.AUTO_ROLLBACK}")
        deploy = DeployInput(run_id=self._status.run_id, execution=workflow.info().run_id, tenant=self._inp.tenant,
                             kind=DeployKind.AUTO_ROLLBACK, service=deployed.service, image=image, repo=self._inp.repo,
                             started_by=AUTO_ROLLBACK_ACTOR, failed_phase=failed.name)
        try:
            result = await self._run_deploy(deploy, f"{deploy.kind} {deploy.service} -> {deploy.image} ({failed.name} failed)")
        except ActivityError as exc:
            if isinstance(exc.cause, CancelledError):  # the run was cancelled meanwhile: it ends cancelled, not failed
                raise
            cause = failure_text(exc)
            failed.message = f"{failed.message}; the rollback to {image} failed: {cause}"
            return f"{why} (the rollback to {image} failed: {cause})"
        self._status.rolled_back = result
        failed.message = f"{failed.message} (rolled back to {image})"
        self._webhooks.send("auto_rolled_back", image=result.image, previous_image=result.previous_image,
                            failed_phase=failed.name, error=why)
        return f"{why} (rolled back to {image})"

    async def _await_approval(self, state: PhaseState) -> None:
        policy, approval = self._inp.tenant.approval, self._status.approval
        approval.awaiting, approval.since = True, workflow.now()  # before the phase starts: its page shows the gate
        self._start_phase(state, State.AWAITING_APPROVAL)
        self._webhooks.send("awaiting_approval", approvers=policy.approvers, min_approvals=policy.min_approvals)
        try:
            await workflow.wait_condition(lambda: self._gate.decided, timeout=policy.timeout)
        except asyncio.TimeoutError:
            self._gate.time_out(workflow.now())
        approval.awaiting = False
        last = approval.decisions[-1]
        self._visibility.memo()
        if approval.outcome == Outcome.APPROVED:
            self._webhooks.send("approved", by=approval.approved_by, comment=last.text)
            return
        if approval.outcome == Outcome.TIMED_OUT:
            self._webhooks.send("timed_out", on_timeout=policy.on_timeout)
            if policy.on_timeout == "cancel":
                self._end_phase(state, State.CANCELLED, last.text)
                self._status.error = last.text
                raise asyncio.CancelledError(last.text)
            raise RunFailure(self._reject_phase(state, f"rejected by timeout: {last.text}"), status=State.REJECTED)
        self._webhooks.send("rejected", by=last.by, reason=last.text)
        raise RunFailure(self._reject_phase(state, f"rejected by {last.by}: {last.text}".rstrip(": ")), status=State.REJECTED)

    def _reject_phase(self, state: PhaseState, message: str) -> str:
        self._end_phase(state, State.REJECTED, message)
        return message

    # -- phase and run transitions: the status, search attributes and memo, GitHub -------------------------
    def _start_phase(self, state: PhaseState, phase_state: State) -> None:
        state.state, state.started_at = phase_state, state.started_at or workflow.now()
        self._visibility.set(status=run_state_of(phase_state), phase=state.name)
        self._github.phase_started(state, phase_state)

    def _end_phase(self, state: PhaseState, end_state: State, message: str = "") -> None:
        state.state, state.ended_at, state.message = end_state, workflow.now(), message
        self._github.phase_ended(state, end_state, message)
        self._visibility.refresh()

