"""``CommitRun``: one commit of one link in one tenant, its phases in order.

checkout (resolve + validate every file) -> each execution phase: its shards at once, fail fast ->
the deployment phase: the approval gate if the tenant requires one, a wait timer, then deploy.
A rollback run is one deployment phase that redeploys an image from the service's ledger.

The run owns small deterministic components: ``ApprovalGate`` (who may decide), ``ShardRunner`` (shards on
their worker hosts), ``RunVisibility`` (search attributes, memo, its page), ``WebhookNotifier`` and
``GitHubReporter``; its deployment phase (gate, wait timer, freezes, deploy, automatic rollback) is
``DeploymentSteps`` in ``workflows/deployment.py``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.shards import ShardActivities
    from katkit.models import (
        ApprovalState,
        CheckoutInput,
        CommitRunInput,
        Decision,
        DecisionInput,
        Phase,
        PhaseState,
        PhaseType,
        PrepareAhead,
        RunPlan,
        RetrySpec,
        RunStatus,
        ShardState,
    )
    from katkit.names import (COMMIT_RUN, QUERY_STATUS, SIGNAL_APPROVE, SIGNAL_FREEZE_CHANGED, SIGNAL_REJECT,
                              UPDATE_DECIDE, UPDATE_OVERRIDE_FREEZE)
    from katkit.states import ErrorType, State
    from workflows.deployment import DeploymentSteps, RunFailure
    from workflows.gate import ApprovalGate
    from workflows.github import GitHubReporter
    from workflows.notifier import WebhookNotifier
    from workflows.options import CHECKOUT_TIMEOUT, INFRA_RETRY, failure_text, is_error
    from workflows.shards import ShardRunner
    from workflows.visibility import RunVisibility

GATES_PATCH = "katkit-gates-1"  # memo, webhooks, wait timer: runs recorded before it replay without them
GITHUB_PATCH = "katkit-github-1"  # statuses and deployments on GitHub links
HOSTS_PATCH = "katkit-hosts-1"  # shards go to the worker host that owns their builder
PIPELINE_PATCH = "katkit-pipeline-1"  # the next execution phase's builders are prepared while a phase runs
PREPARE_AHEAD_PATCH = "katkit-prepare-ahead-1"  # ...and those of the tenant's prepare_ahead phases after it
PREPARE_INLINE_PATCH = "katkit-prepare-inline-1"  # ...by the host's preparer, handed over by the checkout and shards
RETRY_PATCH = "katkit-retry-1"  # katkit retry: the earlier attempt's succeeded phases are reused
ROLLBACK_PHASE = Phase(name="ROLLBACK", type=PhaseType.DEPLOYMENT, order=1)


@workflow.defn(name=COMMIT_RUN)
class CommitRun(DeploymentSteps):
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
        inline = workflow.patched(PREPARE_INLINE_PATCH)  # no prepare_builder activities: the host's preparer
        try:
            self._visibility.set(status=State.RUNNING, phase="checkout" if inp.rollback is None else ROLLBACK_PHASE.name)
            # the checkout's host prepares the first phases' builders (a retry's first phases may be reused: none)
            first = inp.tenant.prepare_ahead if inline and self._shards.by_host and inp.retry is None else 0
            plan = await self._plan(inp, prepare_ahead=first)
            self._shards.host = plan.host_queue if self._shards.by_host else None
            for phase in plan.first_prepared(first) if inp.rollback is None else []:
                self._shards.mark_prepared(phase)
                self._shards.remove_unstarted = True  # a shard cancelled before it started: its builder goes too
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
                        prepare: Callable[[], None] | None = None  # the builders made ready while this phase runs
                        ahead: list[PrepareAhead] = []  # ...by the host of its first shard (PREPARE_INLINE_PATCH)
                        if following is not None and following.type == PhaseType.EXECUTION and \
                                not self._status.phases[index + 1].reused_from and workflow.patched(PIPELINE_PATCH):
                            if inline and self._shards.by_host:  # the host that prepares them runs them
                                ahead = self._hand_over(self._ahead(index, plan))
                            else:
                                prepare = functools.partial(self._prepare_ahead, self._ahead(index, plan), plan)
                                if not workflow.patched(PREPARE_AHEAD_PATCH):  # recorded before: prepares went first
                                    prepare()
                                    prepare = None
                        try:
                            await self._execute(phase, state, plan, then=prepare, ahead=ahead)
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

    def _ahead(self, index: int, plan: RunPlan) -> list[tuple[int, Phase]]:
        """The execution phases after phase ``index`` whose builders are prepared now, each with how many phases
        ahead it is: the next one (runs recorded before PREPARE_AHEAD_PATCH), else up to the tenant's
        ``prepare_ahead`` in a row, up to a deployment phase or a reused one, each once."""
        ahead_patch = workflow.patched(PREPARE_AHEAD_PATCH)  # memoized: the later call in run() gets the same
        self._shards.remove_unstarted = ahead_patch
        depth = self._inp.tenant.prepare_ahead if ahead_patch else 1
        found = []
        for ahead in range(1, depth + 1):
            at = index + ahead
            if at >= len(plan.phases) or plan.phases[at].type != PhaseType.EXECUTION or self._status.phases[at].reused_from:
                break
            if not self._shards.is_prepared(plan.phases[at].name):
                found.append((ahead, plan.phases[at]))
        return found

    def _prepare_ahead(self, phases: list[tuple[int, Phase]], plan: RunPlan) -> None:
        for ahead, phase in phases:
            self._shards.prepare(phase, plan, ahead=ahead)

    def _hand_over(self, phases: list[tuple[int, Phase]]) -> list[PrepareAhead]:
        """The phases ahead whose builders the first shard's host prepares (no activity of their own); each waits
        until the phases before it would have timed out."""
        for _, phase in phases:
            self._shards.mark_prepared(phase)
        return [PrepareAhead(phase=phase, deadline=workflow.now() + self._inp.tenant.phase_timeout * ahead)
                for ahead, phase in phases]

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

    async def _plan(self, inp: CommitRunInput, prepare_ahead: int = 0) -> RunPlan:
        """The checkout's plan; a rollback's is its one deployment phase (nothing to read from a repository)."""
        if inp.rollback is not None:
            return RunPlan(sha=inp.rollback.sha or inp.sha, env_entry="rollback", phases=[ROLLBACK_PHASE])
        assert inp.link is not None, "a run of a commit has a link"
        return await workflow.execute_activity_method(
            ShardActivities.checkout, CheckoutInput(link=inp.link, env=inp.tenant.env, sha=inp.sha, tenant=inp.tenant,
                                                    prepare_ahead=prepare_ahead, untrusted=inp.untrusted, ref=inp.ref),
            start_to_close_timeout=CHECKOUT_TIMEOUT, retry_policy=INFRA_RETRY,
            summary=f"checkout {inp.repo}@{inp.sha[:12]}",
        )

    async def _execute(self, phase: Phase, state: PhaseState, plan: RunPlan, then: Callable[[], None] | None,
                       ahead: list[PrepareAhead] | None = None) -> None:
        """Run an execution phase's shards; ``then``, right after they are started (prepares of phases ahead: a
        worker host takes the shards first)."""
        self._start_phase(state, State.RUNNING)
        try:
            failure = await self._shards.run(phase, state, plan, then=then, ahead=ahead)
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

    # -- freezes: an approver's override, and TenantFreezes' news ------------------------------------------
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
