"""``CommitRun``: one commit of one link in one tenant, its phases in order.

checkout (resolve + validate every file) -> each execution phase: its shards at once, fail fast ->
the deployment phase: the approval gate if the tenant requires one, a wait timer, then deploy.
A rollback run is one deployment phase that redeploys an image from the service's ledger.

The run owns small deterministic components: ``ApprovalGate`` (who may decide), ``ShardRunner`` (shards on
their worker hosts), ``RunVisibility`` (search attributes, memo), ``WebhookNotifier`` and ``GitHubReporter``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.deploy import DeployActivities
    from activities.shards import ShardActivities
    from katkit.models import (
        ApprovalState,
        CheckoutInput,
        CommitRunInput,
        Decision,
        DecisionInput,
        DeployInput,
        DeployResult,
        FreezeCheck,
        FreezeCheckInput,
        Phase,
        PhaseState,
        PhaseType,
        RunPlan,
        RetrySpec,
        RunStatus,
        ShardState,
    )
    from katkit.platforms import RecordedDecision
    from katkit.names import (COMMIT_RUN, QUERY_STATUS, SIGNAL_APPROVE, SIGNAL_FREEZE_CHANGED, SIGNAL_REJECT,
                              UPDATE_DECIDE, UPDATE_OVERRIDE_FREEZE)
    from katkit.states import TERMINAL, DeployKind, ErrorType, Outcome, State, run_state_of
    from workflows.gate import ApprovalGate
    from workflows.github import GitHubReporter
    from workflows.notifier import WebhookNotifier
    from workflows.options import (
        CHECKOUT_TIMEOUT,
        DEPLOY_HEARTBEAT_TIMEOUT,
        DEPLOY_TIMEOUT,
        INFRA_RETRY,
        failure_text,
        is_error,
    )
    from workflows.shards import ShardRunner
    from workflows.visibility import RunVisibility

GATES_PATCH = "katkit-gates-1"  # memo, webhooks, wait timer: runs recorded before it replay without them
GITHUB_PATCH = "katkit-github-1"  # statuses and deployments on GitHub links
HOSTS_PATCH = "katkit-hosts-1"  # shards go to the worker host that owns their builder
AUTOROLLBACK_PATCH = "katkit-autorollback-1"  # on_post_deploy_failure: rollback puts the previous image back
PIPELINE_PATCH = "katkit-pipeline-1"  # the next execution phase's builders are prepared while a phase runs
RETRY_PATCH = "katkit-retry-1"  # katkit retry: the earlier attempt's succeeded phases are reused
FREEZE_PATCH = "katkit-freeze-1"  # a deploy waits while the tenant is frozen (or fails: on_freeze: fail)
FREEZE_CHECK_TIMEOUT = timedelta(seconds=30)
MIN_FREEZE_WAIT = timedelta(seconds=1)
AUTO_ROLLBACK_ACTOR = "katkit"  # who the ledger says started an automatic rollback
ROLLBACK_PHASE = Phase(name="ROLLBACK", type=PhaseType.DEPLOYMENT, order=1)


class RunFailure(Exception):
    """Internal: a phase failed or the gate said no; the message is the one line the user sees."""

    def __init__(self, message: str, status: State = State.FAILED) -> None:
        super().__init__(message)
        self.status = status


@workflow.defn(name=COMMIT_RUN)
class CommitRun:
    @workflow.init
    def __init__(self, inp: CommitRunInput) -> None:
        policy = inp.tenant.approval
        self._inp = inp
        self._status = RunStatus(
            run_id=workflow.info().workflow_id, tenant=inp.tenant.name, env=inp.tenant.env, repo=inp.repo,
            sha=inp.sha, ref=inp.ref, started_by=inp.started_by, started_at=workflow.now(), untrusted=inp.untrusted,
            attempt=inp.attempt,
            approval=ApprovalState(required=policy.required, approvers=list(policy.approvers),
                                   min_approvals=policy.min_approvals, allow_self_approval=policy.allow_self_approval,
                                   require_proof=policy.require_proof),
        )
        self._gate = ApprovalGate(inp.tenant, inp.started_by, self._status.approval,
                                  run_id=self._status.run_id, sha=inp.sha, execution=workflow.info().run_id)
        self._visibility = RunVisibility(self._status, memo=False)
        self._webhooks = WebhookNotifier([], self._status, enabled=False)
        self._github = GitHubReporter(inp.link, inp.tenant, self._status, enabled=False)
        self._shards = ShardRunner(inp, self._status.run_id, by_host=False, on_change=self._visibility.refresh)
        self._gates_patch = False  # runs recorded before it have no memo, webhooks or wait timer
        self._freeze_changed = False
        self._evicted = False

    # -- the run ---------------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: CommitRunInput) -> RunStatus:
        self._gates_patch = workflow.patched(GATES_PATCH)  # the patches in the order runs recorded them
        self._visibility.memo_enabled = self._gates_patch
        self._webhooks = WebhookNotifier(inp.tenant.webhooks, self._status, enabled=self._gates_patch)
        self._github.enabled = bool(inp.link and inp.link.github) and workflow.patched(GITHUB_PATCH) and bool(inp.sha)
        self._shards.by_host = inp.tenant.builders_need_their_host and workflow.patched(HOSTS_PATCH)
        try:
            self._visibility.set(status=State.RUNNING, phase="checkout" if inp.rollback is None else ROLLBACK_PHASE.name)
            plan = await self._plan(inp)
            self._shards.host = plan.host_queue if self._shards.by_host else None
            self._status.phases = [
                PhaseState(name=p.name, type=p.type, order=p.order, parallelism=p.parallelism,
                           shards=[ShardState(index=i) for i in range(p.parallelism if p.type == PhaseType.EXECUTION else 0)])
                for p in plan.phases
            ]
            if inp.retry is not None and workflow.patched(RETRY_PATCH):
                self._reuse(inp.retry)
            for p in self._status.phases:
                if not p.reused_from:
                    self._github.commit_status(p, "pending", "queued")
            try:
                for index, (phase, state) in enumerate(zip(plan.phases, self._status.phases)):
                    if state.reused_from:
                        continue
                    if phase.type == PhaseType.EXECUTION:
                        following = plan.phases[index + 1] if index + 1 < len(plan.phases) else None
                        if following is not None and following.type == PhaseType.EXECUTION and \
                                not self._status.phases[index + 1].reused_from and workflow.patched(PIPELINE_PATCH):
                            self._shards.prepare(following, plan)  # its builders get ready while this phase runs
                        try:
                            await self._execute(phase, state, plan)
                        except RunFailure as exc:
                            if self._rolls_back_after(exc):  # a phase after the deploy failed: the previous image goes back
                                raise RunFailure(await self._auto_rollback(state, str(exc))) from None
                            raise
                    else:
                        await self._deploy(state, plan)
            except BaseException as exc:  # failed, rejected or cancelled: no prepared builder is left behind
                if not isinstance(exc, GeneratorExit):
                    await self._shards.discard_prepared()
                raise
            self._finish(State.SUCCEEDED)
            return self._status
        except RunFailure as exc:
            self._finish(exc.status, str(exc))
            raise ApplicationError(str(exc), self._status, type=ErrorType.RUN_FAILED, non_retryable=True) from None
        except ActivityError as exc:
            cause = failure_text(exc)
            if isinstance(exc.cause, CancelledError):  # the run was cancelled while an activity ran (checkout)
                self._finish(State.CANCELLED, "cancelled")
                raise asyncio.CancelledError("cancelled") from None
            if is_error(exc, ErrorType.SUPERSEDED):
                self._finish(State.CANCELLED, cause)
                raise asyncio.CancelledError(cause) from None
            self._finish(State.FAILED, cause)
            raise ApplicationError(cause, self._status, type=ErrorType.RUN_FAILED, non_retryable=True) from None
        except (asyncio.CancelledError, CancelledError):
            self._finish(State.CANCELLED, self._status.error or "cancelled")
            raise
        except GeneratorExit:  # evicted from the worker's cache: nothing may be awaited, the run goes on elsewhere
            self._evicted = True
            raise
        finally:
            if not self._evicted:
                await self._webhooks.flush()
                await self._github.flush()

    def _reuse(self, retry: RetrySpec) -> None:
        """A retry: the earlier attempt's succeeded execution phases before ``retry.from_phase`` are taken as they
        ended (state, shards, log keys: their logs stay reachable), never run again; a deployment phase always runs."""
        earlier = {p.name: p for p in retry.reuse}
        for i, state in enumerate(self._status.phases):
            if state.name == retry.from_phase:
                return
            old = earlier.get(state.name)
            if old is None or state.type != PhaseType.EXECUTION or old.state != State.SUCCEEDED \
                    or old.parallelism != state.parallelism:
                continue
            self._status.phases[i] = old.model_copy(update={
                "reused_from": old.reused_from or retry.from_attempt, "order": state.order,
                "message": f"reused from attempt {old.reused_from or retry.from_attempt}"})

    async def _plan(self, inp: CommitRunInput) -> RunPlan:
        """The checkout's plan; a rollback's is its one deployment phase (nothing to read from a repository)."""
        if inp.rollback is not None:
            return RunPlan(sha=inp.rollback.sha or inp.sha, env_entry="rollback", phases=[ROLLBACK_PHASE])
        assert inp.link is not None, "a run of a commit has a link"
        return await workflow.execute_activity_method(
            ShardActivities.checkout, CheckoutInput(link=inp.link, env=inp.tenant.env, sha=inp.sha, tenant=inp.tenant),
            start_to_close_timeout=CHECKOUT_TIMEOUT, retry_policy=INFRA_RETRY,
            summary=f"checkout {inp.repo}@{inp.sha[:12]}",
        )

    async def _execute(self, phase: Phase, state: PhaseState, plan: RunPlan) -> None:
        self._start_phase(state, State.RUNNING)
        try:
            failure = await self._shards.run(phase, state, plan)
        except (asyncio.CancelledError, CancelledError):
            self._end_phase(state, State.CANCELLED)
            raise
        except Exception as exc:
            self._end_phase(state, State.FAILED, str(exc))
            raise
        if failure:
            self._end_phase(state, State.FAILED, failure)
            raise RunFailure(f"phase {phase.name} failed: {failure}")
        self._end_phase(state, State.SUCCEEDED)

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
            result: DeployResult = await workflow.execute_activity_method(
                DeployActivities.deploy, deploy,
                start_to_close_timeout=DEPLOY_TIMEOUT, heartbeat_timeout=DEPLOY_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{deploy.kind} {deploy.service} -> {deploy.image}",
            )
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

    async def _respect_freezes(self, state: PhaseState) -> None:
        """No deploy while the tenant is frozen (a recurring window of its config, or ``katkit freeze``): wait until the
        freeze ends or is lifted (then look again), or fail at once with ``on_freeze: fail``; an approver's override
        (``katkit approve --override-freeze``) lets this run deploy through it."""
        freeze, began, waited = self._status.freeze, workflow.now(), False
        while not freeze.overrides:
            self._freeze_changed = False  # before asking: an unfreeze while the check runs wakes the wait below
            check: FreezeCheck = await workflow.execute_activity_method(
                DeployActivities.freeze_check, FreezeCheckInput(tenant=self._inp.tenant, run_id=self._status.run_id),
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

    @workflow.update(name=UPDATE_OVERRIDE_FREEZE,
                     description='Deploy through a freeze (an approver): {"by": "<you>", "comment": "why"}')
    def override_freeze(self, inp: DecisionInput) -> Decision:
        decision = Decision(kind="override_freeze", by=inp.by, at=workflow.now(), text=inp.comment)
        self._status.freeze.overrides.append(decision)
        self._visibility.memo()
        return decision

    @override_freeze.validator
    def _validate_override_freeze(self, inp: DecisionInput) -> None:
        refused = self._override_refusal(inp.by)
        if refused:
            raise ValueError(refused)

    @workflow.signal(name=SIGNAL_FREEZE_CHANGED, description="A freeze was lifted: look again (sent by TenantFreezes)")
    def freeze_changed(self) -> None:
        self._freeze_changed = True

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
            result: DeployResult = await workflow.execute_activity_method(
                DeployActivities.deploy, deploy,
                start_to_close_timeout=DEPLOY_TIMEOUT, heartbeat_timeout=DEPLOY_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{deploy.kind} {deploy.service} -> {deploy.image} ({failed.name} failed)",
            )
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

    def _finish(self, status: State, error: str = "") -> None:
        for p in self._status.phases:
            if p.state == State.PENDING:
                p.state = State.SKIPPED
                self._github.commit_status(p, "error", f"not run: the run {status}")
            elif p.ended_at is None and p.started_at is not None:  # cancelled at the gate or while deploying
                self._end_phase(p, status)
        self._status.approval.awaiting = False
        self._status.error = error
        self._status.ended_at = workflow.now()
        deploy_failed = any(p.type == PhaseType.DEPLOYMENT and p.state == State.FAILED for p in self._status.phases)
        if status == State.FAILED and not deploy_failed:  # a failed deploy has said so already
            self._webhooks.send("failed", error=error)
        self._visibility.set(status=status)

    @workflow.query(name=QUERY_STATUS, description="The run's status: phases, shards, the gate, the deploy (JSON)")
    def status(self) -> RunStatus:
        return self._status

    # -- the approval gate ---------------------------------------------------------------------------------
    def _decide(self, kind: str, inp: DecisionInput) -> Decision:
        decision = self._gate.decide(kind, inp, workflow.now(), self._status.status)
        if not decision.accepted:
            workflow.logger.warning("decision refused: %s", decision.refused_because)
        self._visibility.memo()
        return decision

    @workflow.signal(name=SIGNAL_APPROVE, description='Approve the deploy: {"by": "<you>", "comment": "why"}')
    def approve(self, inp: DecisionInput) -> None:
        self._decide("approve", inp)

    @workflow.signal(name=SIGNAL_REJECT, description='Reject the deploy: {"by": "<you>", "reason": "why"}')
    def reject(self, inp: DecisionInput) -> None:
        self._decide("reject", inp)

    @workflow.update(name=UPDATE_DECIDE, description="approve or reject, answered at once (what the katkit CLI uses)")
    def decide(self, kind: str, inp: DecisionInput) -> Decision:
        """The CLI's way to decide: the validator answers at once and a refused decision writes no history."""
        return self._decide(kind, inp)

    @decide.validator
    def _validate_decide(self, kind: str, inp: DecisionInput) -> None:
        if kind not in ("approve", "reject"):
            raise ValueError(f"unknown decision {kind!r}; use approve or reject")
        refused = (self._gate.refusal(kind, inp.by, self._status.status)
                   or self._gate.verification(kind, inp, workflow.now())[1])  # a signature that proves nothing
        if refused:
            raise ValueError(refused)
