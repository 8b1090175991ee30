"""``CommitRun``: one commit of one link in one tenant, its phases in order.

checkout (resolve + validate every file) -> each execution phase: its shards at once, fail fast ->
the deployment phase: the approval gate if the tenant requires one, then deploy.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.katkit_activities import KatkitActivities, ping_host, ping_queue
    from katkit.builders import builder_name
    from katkit.errors import BAD_INPUT_TYPE
    from workflows.gate import ApprovalGate
    from katkit.models import (
        ApprovalState,
        NotifyInput,
        PickHostInput,
        RollbackSpec,
        ServiceDescription,
        CheckoutInput,
        CommitRunInput,
        Decision,
        DecisionInput,
        DeployResult,
        DeployInput,
        GitHubReportInput,
        GitHubReportResult,
        GitHubUpdate,
        Phase,
        PhaseState,
        PhaseType,
        RemoveBuilderInput,
        RunPlan,
        RunStatus,
        ShardInput,
        ShardResult,
        ShardState,
    )
    from katkit.names import (
        COMMIT_RUN,
        QUERY_STATUS,
        SA_PHASE,
        SA_REPO,
        SA_SHA,
        SA_STATUS,
        SA_TENANT,
        SIGNAL_APPROVE,
        SIGNAL_REJECT,
        UPDATE_DECIDE,
    )

INFRA_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[BAD_INPUT_TYPE],
)
CHECKOUT_TIMEOUT = timedelta(minutes=10)
SHARD_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
SHARD_TIMEOUT_MARGIN = timedelta(minutes=5)
DEPLOY_TIMEOUT = timedelta(minutes=30)
DEPLOY_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
CLEANUP_TIMEOUT = timedelta(minutes=2)
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
NOTIFY_BUDGET = timedelta(seconds=20)
GATES_PATCH = "katkit-gates-1"  # memo, webhooks, wait timer: runs recorded before it replay without them
GITHUB_PATCH = "katkit-github-1"  # statuses and deployments on GitHub links
HOSTS_PATCH = "katkit-hosts-1"  # shards go to the worker host that owns their builder
PICK_HOST_TIMEOUT = timedelta(seconds=30)
PING_TIMEOUT = timedelta(seconds=30)  # a live host answers a ping at once, however busy
GITHUB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=30), non_retryable_error_types=[BAD_INPUT_TYPE])
GITHUB_BATCH_BUDGET = timedelta(minutes=5)  # one batch of updates, retries included; then the next batch
GITHUB_FLUSH = timedelta(seconds=60)  # how long a finished run waits for GitHub to take its last updates
GITHUB_STATE = {"succeeded": "success", "failed": "failure", "rejected": "failure"}  # else: error
DEPLOYMENT_STATE = {"succeeded": "success", "failed": "failure"}  # else (rejected, cancelled, timed out): error


class RunFailure(Exception):
    """Internal: a phase failed or the gate said no; the message is the one line the user sees."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


@workflow.defn(name=COMMIT_RUN)
class CommitRun:
    @workflow.init
    def __init__(self, inp: CommitRunInput) -> None:
        policy = inp.tenant.approval
        self._inp = inp
        self._status = RunStatus(
            run_id=workflow.info().workflow_id, tenant=inp.tenant.name, env=inp.tenant.env, repo=inp.link.repo,
            sha=inp.sha, ref=inp.ref, started_by=inp.started_by, started_at=workflow.now(),
            approval=ApprovalState(required=policy.required, approvers=list(policy.approvers),
                                   min_approvals=policy.min_approvals, allow_self_approval=policy.allow_self_approval),
        )
        self._gate = ApprovalGate(inp.tenant, inp.started_by, self._status.approval)
        self._cleanup_later: list[tuple[str, str]] = []  # (builder, its host's queue) whose activity gave up
        self._search_attributes: dict[str, str] = {}
        self._notifications: list[asyncio.Future[None]] = []
        self._v2 = False
        self._gh = False
        self._gh_queue: list[GitHubUpdate] = []
        self._gh_sender: asyncio.Future[None] | None = None
        self._gh_deployment_id: int | None = None
        self._gh_deployment_opened = False
        self._hosts = False
        self._evicted = False
        self._host: str | None = None  # the worker host whose builders this run's shards use (its own task queue)

    # -- the run ---------------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: CommitRunInput) -> RunStatus:
        self._v2 = workflow.patched(GATES_PATCH)
        self._gh = bool(inp.link.github) and workflow.patched(GITHUB_PATCH)
        self._hosts = inp.tenant.builders_need_their_host and workflow.patched(HOSTS_PATCH)
        try:
            self._set(status="running", phase="checkout" if inp.rollback is None else "ROLLBACK")
            plan = self._rollback_plan(inp.rollback) if inp.rollback else await workflow.execute_activity_method(
                KatkitActivities.checkout, CheckoutInput(link=inp.link, env=inp.tenant.env, sha=inp.sha, tenant=inp.tenant),
                start_to_close_timeout=CHECKOUT_TIMEOUT, retry_policy=INFRA_RETRY,
                summary=f"checkout {inp.link.repo}@{inp.sha[:12]}",
            )
            self._host = plan.host_queue if self._hosts else None
            self._status.phases = [
                PhaseState(name=p.name, type=p.type, order=p.order, parallelism=p.parallelism,
                           shards=[ShardState(index=i) for i in range(p.parallelism if p.type == PhaseType.EXECUTION else 0)])
                for p in plan.phases
            ]
            for p in self._status.phases:
                self._github_status(p, "pending", "queued")
            for phase, state in zip(plan.phases, self._status.phases):
                if phase.type == PhaseType.EXECUTION:
                    await self._execute(phase, state, plan)
                else:
                    await self._deploy(phase, state, plan)
            self._finish("succeeded")
            return self._status
        except RunFailure as exc:
            self._finish(exc.status, str(exc))
            raise ApplicationError(str(exc), self._status, type="RunFailed", non_retryable=True) from None
        except ActivityError as exc:
            cause = exc.cause.message if isinstance(exc.cause, FailureError) else str(exc)
            if isinstance(exc.cause, CancelledError):  # the run was cancelled while an activity ran (checkout)
                self._finish("cancelled", "cancelled")
                raise asyncio.CancelledError("cancelled") from None
            if isinstance(exc.cause, ApplicationError) and exc.cause.type == "Superseded":
                self._finish("cancelled", cause)
                raise asyncio.CancelledError(cause) from None
            self._finish("failed", cause)
            raise ApplicationError(cause, self._status, type="RunFailed", non_retryable=True) from None
        except (asyncio.CancelledError, CancelledError):
            self._finish("cancelled", self._status.error or "cancelled")
            raise
        except GeneratorExit:  # evicted from the worker's cache: nothing may be awaited, the run goes on elsewhere
            self._evicted = True
            raise
        finally:
            if not self._evicted:
                await self._flush_notifications()
                await self._flush_github()

    def _rollback_plan(self, rollback: RollbackSpec) -> RunPlan:
        service = ServiceDescription(name=rollback.service, docker_image=rollback.image, fields={"Name": rollback.service})
        phase = Phase(name="ROLLBACK", type=PhaseType.DEPLOYMENT, order=1)
        return RunPlan(sha=rollback.sha or self._inp.sha, env_entry="rollback", phases=[phase], service=service)

    async def _execute(self, phase: Phase, state: PhaseState, plan: RunPlan) -> None:
        self._start_phase(state, "running")
        deadline = workflow.now() + self._inp.tenant.phase_timeout

        def start(i: int, note: str = "") -> asyncio.Future[ShardResult]:
            shard = state.shards[i]
            shard.host = shard.host or self._host or ""
            return asyncio.ensure_future(workflow.execute_activity_method(
                KatkitActivities.run_shard,
                ShardInput(run_id=self._status.run_id, attempt_key=workflow.info().run_id, tenant=self._inp.tenant,
                           link=self._inp.link, sha=plan.sha, phase=phase, shard_index=i, local_fleet=plan.local_fleet,
                           deadline=deadline, generation=shard.generation, log_note=note),
                start_to_close_timeout=self._inp.tenant.phase_timeout + SHARD_TIMEOUT_MARGIN,
                heartbeat_timeout=SHARD_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{phase.name} shard {i + 1}/{phase.parallelism}", **self._host_options(shard.host),
            ))

        tasks = {start(i): i for i in range(phase.parallelism)}
        for shard in state.shards:
            shard.state = "running"
        failure = ""
        pending = list(tasks)

        def in_shard_order(futures: set[asyncio.Future[ShardResult]]) -> list[asyncio.Future[ShardResult]]:
            return sorted(futures, key=tasks.__getitem__)  # sets have no stable order; commands must have one

        try:
            while pending and not failure:
                done, rest = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending = in_shard_order(rest)
                for task in in_shard_order(done):
                    i = tasks[task]
                    if self._host_waited_for(task, state.shards[i]):  # busy or gone: ask, then wait or move
                        retry = start(i, await self._rehome(state.shards[i]))
                        tasks[retry] = i
                        pending = in_shard_order({*pending, retry})
                        continue
                    failure = failure or self._record_shard(phase, state.shards[i], task)
        except (asyncio.CancelledError, CancelledError):
            await self._cancel_shards(pending, state, "cancelled")
            self._end_phase(state, "cancelled")
            raise
        except Exception as exc:  # e.g. no host could be picked: never leave sibling shards running
            await self._cancel_shards(pending, state, "cancelled")
            self._end_phase(state, "failed", str(exc))
            raise
        if failure:
            await self._cancel_shards(pending, state, "cancelled (another shard failed)")
            self._end_phase(state, "failed", failure)
            raise RunFailure(f"phase {phase.name} failed: {failure}")
        self._end_phase(state, "succeeded")

    # -- worker hosts: a shard's attempts go to the host that owns its builder --------------------------------
    def _host_options(self, host: str) -> dict[str, object]:
        """Activity options that send a builder's activities to its host, waiting for it at most ``host_wait``."""
        return {"task_queue": host, "schedule_to_start_timeout": self._inp.tenant.host_wait} if host else {}

    def _host_waited_for(self, task: asyncio.Future[ShardResult], shard: ShardState) -> bool:
        """The shard's attempt waited ``host_wait`` for its host without starting: that host is busy or gone."""
        if task.cancelled() or not shard.host:
            return False
        exc = task.exception()
        return isinstance(exc, ActivityError) and isinstance(exc.cause, ActivityTimeout) and \
            exc.cause.type == TimeoutType.SCHEDULE_TO_START

    async def _rehome(self, shard: ShardState) -> str:
        """A busy host keeps the shard (it re-attaches there); a gone one loses it to a live host, where it starts
        afresh. Return the line the shard's new log starts with ('' when it stays)."""
        gone, waited = shard.host, self._inp.tenant.host_wait
        try:
            await workflow.execute_activity(
                ping_host, task_queue=ping_queue(gone), schedule_to_start_timeout=min(waited, PING_TIMEOUT),
                start_to_close_timeout=PING_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"is {gone} there?")
            return ""  # it answered: busy, not gone
        except ActivityError:
            pass
        if gone == self._host:  # the run's host is gone: a live one takes the rest of the run
            self._host = await workflow.execute_activity_method(
                KatkitActivities.pick_host, PickHostInput(reason=f"{gone} did not come back within {waited}"),
                start_to_close_timeout=PICK_HOST_TIMEOUT, retry_policy=INFRA_RETRY, summary="pick a worker host")
        shard.host, shard.generation = self._host or "", shard.generation + 1
        note = (f"host {gone} did not come back within {waited}: this shard started afresh on {shard.host} "
                f"(the builder left on {gone} is removed when that host returns)")
        workflow.logger.warning(note)
        return note

    def _record_shard(self, phase: Phase, shard: ShardState, task: asyncio.Future[ShardResult]) -> str:
        """Record a finished shard; return why it failed, or '' when it succeeded."""
        label = f"shard {shard.index + 1}/{phase.parallelism}"
        exc = task.exception()
        if exc is not None:
            shard.state = "failed"
            cause = exc.cause.message if isinstance(exc, ActivityError) and isinstance(exc.cause, FailureError) else str(exc)
            self._cleanup_later.append((builder_name(self._status.run_id, workflow.info().run_id, phase.name, shard.index,
                                                     shard.generation), shard.host))
            return f"{label}: {cause}"
        result = task.result()
        shard.exit_code, shard.log_key, shard.reattached = result.exit_code, result.log_key, result.reattached
        if result.started_at and result.ended_at:
            shard.duration_s = round((result.ended_at - result.started_at).total_seconds(), 3)
        if result.exit_code == 0:
            shard.state = "succeeded"
            return ""
        shard.state = "failed"
        return f"{label}: {result.message or f'exited {result.exit_code}'}"

    async def _cancel_shards(self, pending: list[asyncio.Future[ShardResult]], state: PhaseState, why: str) -> None:
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except BaseException:  # noqa: BLE001 - each shard's own end is recorded below
                pass
        for shard in state.shards:
            if shard.state == "running":
                shard.state = why
        if self._hosts:  # each on its own host, all at once; a host that is gone leaves it to its reaper
            removals = [workflow.execute_activity_method(
                KatkitActivities.remove_builder, RemoveBuilderInput(tenant=self._inp.tenant, builder=name),
                start_to_close_timeout=CLEANUP_TIMEOUT, retry_policy=INFRA_RETRY, **self._host_options(host),
            ) for name, host in self._cleanup_later]
            for name_host, outcome in zip(self._cleanup_later, await asyncio.gather(*removals, return_exceptions=True)):
                if isinstance(outcome, BaseException):
                    workflow.logger.warning("builder %s left to its host's reaper: %s", name_host[0], outcome)
        else:
            for name, _ in self._cleanup_later:  # builders whose activity gave up: never leave them behind
                await workflow.execute_activity_method(
                    KatkitActivities.remove_builder, RemoveBuilderInput(tenant=self._inp.tenant, builder=name),
                    start_to_close_timeout=CLEANUP_TIMEOUT, retry_policy=INFRA_RETRY,
                )
        self._cleanup_later.clear()

    async def _deploy(self, phase: Phase, state: PhaseState, plan: RunPlan) -> None:
        assert plan.service is not None
        policy = self._inp.tenant.approval
        opened = workflow.now()
        if policy.required:
            await self._await_approval(state)
        if self._v2 and policy.wait_timer:  # a soak period: no deploy before it has passed since the gate opened
            not_before = opened + policy.wait_timer
            self._status.approval.deploy_not_before = not_before
            if workflow.now() < not_before:
                self._start_phase(state, "wait_timer")
                await workflow.sleep(not_before - workflow.now())
        self._start_phase(state, "deploying")
        image = self._inp.rollback.image if self._inp.rollback else plan.service.image_for(plan.sha)
        try:
            result: DeployResult = await workflow.execute_activity_method(
                KatkitActivities.deploy,
                DeployInput(run_id=self._status.run_id, execution=workflow.info().run_id, tenant=self._inp.tenant,
                            sha=plan.sha, repo=self._inp.link.repo, service=plan.service, started_by=self._inp.started_by,
                            approved_by=list(self._status.approval.approved_by),
                            image=self._inp.rollback.image if self._inp.rollback else None),
                start_to_close_timeout=DEPLOY_TIMEOUT, heartbeat_timeout=DEPLOY_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{'rollback' if self._inp.rollback else 'deploy'} {plan.service.name} -> {image}",
            )
        except ActivityError as exc:
            cause = exc.cause.message if isinstance(exc.cause, FailureError) else str(exc)
            superseded = isinstance(exc.cause, ApplicationError) and exc.cause.type == "Superseded"
            self._end_phase(state, "cancelled" if superseded else "failed", cause)
            self._status.error = cause
            if not superseded:
                self._notify("failed", error=cause)
            raise
        self._status.deployed = result
        self._end_phase(state, "succeeded", f"deployed {result.image}")
        self._notify("rolled_back" if self._inp.rollback else "deployed", image=result.image,
                     previous_image=result.previous_image)

    async def _await_approval(self, state: PhaseState) -> None:
        policy = self._inp.tenant.approval
        self._start_phase(state, "awaiting_approval")
        self._status.approval.awaiting = True
        self._status.approval.since = workflow.now()
        self._notify("awaiting_approval", approvers=policy.approvers, min_approvals=policy.min_approvals)
        try:
            await workflow.wait_condition(lambda: self._gate.decided, timeout=policy.timeout)
        except asyncio.TimeoutError:
            self._gate.time_out(workflow.now())
        self._status.approval.awaiting = False
        outcome, last = self._status.approval.outcome, self._status.approval.decisions[-1]
        self._memo()
        if outcome == "approved":
            self._notify("approved", by=self._status.approval.approved_by, comment=last.text)
            return
        if outcome == "timed_out":
            self._notify("timed_out", on_timeout=policy.on_timeout)
            if policy.on_timeout == "cancel":
                self._end_phase(state, "cancelled", last.text)
                self._status.error = last.text
                raise asyncio.CancelledError(last.text)
            raise RunFailure(self._reject_phase(state, f"rejected by timeout: {last.text}"), status="rejected")
        self._notify("rejected", by=last.by, reason=last.text)
        raise RunFailure(self._reject_phase(state, f"rejected by {last.by}: {last.text}".rstrip(": ")), status="rejected")

    def _reject_phase(self, state: PhaseState, message: str) -> str:
        self._end_phase(state, "rejected", message)
        return message

    # -- webhooks and the memo ---------------------------------------------------------------------------
    def _notify(self, event: str, **detail: object) -> None:
        """Send a webhook event in the background: retried a little, never blocking or failing the run."""
        if not self._v2 or not self._inp.tenant.webhooks:
            return
        payload = {"event": event, "run_id": self._status.run_id, "tenant": self._status.tenant,
                   "repo": self._status.repo, "sha": self._status.sha, "phase": self._status.phase,
                   "at": workflow.now().isoformat(), **detail}
        for url in self._inp.tenant.webhooks:  # one activity per URL: a dead one's retries resend nothing to the others
            self._notifications.append(workflow.start_activity_method(
                KatkitActivities.notify, NotifyInput(urls=[url], event=payload),
                start_to_close_timeout=timedelta(seconds=10), schedule_to_close_timeout=NOTIFY_BUDGET,
                retry_policy=NOTIFY_RETRY, summary=f"webhook: {event}",
            ))

    async def _flush_notifications(self) -> None:
        pending, self._notifications = self._notifications, []
        for task in pending:
            try:
                await task
            except BaseException as exc:  # noqa: BLE001 - a dead webhook is logged, never the run's failure
                workflow.logger.warning("webhook delivery gave up: %s", exc)

    def _memo(self) -> None:
        if not self._v2:
            return
        st = self._status
        decisions = [f"{d.kind} by {d.by}{'' if d.accepted else ' (refused)'}" for d in st.approval.decisions]
        summary = f"{st.status}: {st.phase or '-'} | {st.repo}@{st.sha[:12]} -> {st.tenant} by {st.started_by}"
        if st.deployed:
            summary += f" | deployed {st.deployed.image}"
        if st.error:
            summary += f" | {st.error}"
        workflow.upsert_memo({"summary": summary, "decisions": decisions})

    # -- GitHub: statuses and deployments, in order, in the background ---------------------------------
    def _github_status(self, state: PhaseState, gh_state: str, description: str) -> None:
        context = f"katkit/{self._status.tenant}/{state.name}"
        self._github(GitHubUpdate(kind="status", context=context, state=gh_state, description=description))

    def _github_phase_started(self, state: PhaseState, run_state: str) -> None:
        if not self._gh:
            return
        if run_state == "awaiting_approval":
            who = ", ".join(self._inp.tenant.approval.approvers) or "an approver"
            self._github_status(state, "pending", f"awaiting approval by {who}")
        elif run_state == "wait_timer":
            self._github_status(state, "pending", f"wait timer until {self._status.approval.deploy_not_before:%Y-%m-%d %H:%M} UTC")
        else:
            self._github_status(state, "pending", "deploying" if run_state == "deploying" else "running")
        if state.type == PhaseType.DEPLOYMENT:
            tenant = self._inp.tenant
            if not self._gh_deployment_opened:
                self._gh_deployment_opened = True
                env = tenant.github_environment
                self._github(GitHubUpdate(kind="deployment", environment=env, production=tenant.env.upper() in ("PROD", "PRODUCTION"),
                                          description=f"{self._status.repo}@{self._status.sha[:12]} -> {tenant.name} by {self._status.started_by}"))
                self._github(GitHubUpdate(kind="deployment_status", state="queued", environment=env,
                                          description="awaiting approval" if run_state == "awaiting_approval" else "queued"))
            if run_state == "deploying":
                self._github(GitHubUpdate(kind="deployment_status", state="in_progress", environment=tenant.github_environment,
                                          description="deploying"))

    def _github_phase_ended(self, state: PhaseState, end_state: str, message: str) -> None:
        if not self._gh:
            return
        self._github_status(state, GITHUB_STATE.get(end_state, "error"), message or end_state)
        if state.type == PhaseType.DEPLOYMENT and self._gh_deployment_opened:
            self._github(GitHubUpdate(kind="deployment_status", state=DEPLOYMENT_STATE.get(end_state, "error"),
                                      environment=self._inp.tenant.github_environment, description=message or end_state))

    def _github(self, update: GitHubUpdate) -> None:
        """Queue an update; one sender sends the queue in order, so a retried update never overtakes a later one."""
        if not self._gh:
            return
        self._gh_queue.append(update)
        if self._gh_sender is None or self._gh_sender.done():
            self._gh_sender = asyncio.ensure_future(self._send_github())

    async def _send_github(self) -> None:
        while self._gh_queue:
            batch, self._gh_queue = self._gh_queue, []
            try:
                result: GitHubReportResult = await workflow.execute_activity_method(
                    KatkitActivities.github_report,
                    GitHubReportInput(link=self._inp.link, sha=self._status.sha, run_id=self._status.run_id,
                                      execution=workflow.info().run_id, updates=batch, deployment_id=self._gh_deployment_id),
                    start_to_close_timeout=timedelta(seconds=60), schedule_to_close_timeout=GITHUB_BATCH_BUDGET,
                    retry_policy=GITHUB_RETRY, summary=f"GitHub: {len(batch)} update(s)",
                )
                self._gh_deployment_id = result.deployment_id
            except ActivityError as exc:  # GitHub down for the whole budget: the run goes on, the batch is dropped
                cause = exc.cause.message if isinstance(exc.cause, FailureError) else str(exc)
                workflow.logger.warning("GitHub updates given up: %s", cause)

    async def _flush_github(self) -> None:
        if self._gh_sender is not None and not self._gh_sender.done():
            await workflow.wait([self._gh_sender], timeout=GITHUB_FLUSH.total_seconds())

    # -- status and search attributes --------------------------------------------------------------------
    def _set(self, *, status: str | None = None, phase: str | None = None) -> None:
        """Change the run's status/phase and keep KatkitStatus/KatkitPhase (one upsert, only what changed)."""
        self._status.status = status or self._status.status
        self._status.phase = phase or self._status.phase
        updates = []
        for key, value in ((SA_STATUS, self._status.status), (SA_PHASE, self._status.phase)):
            if value and self._search_attributes.get(key.name) != value:
                self._search_attributes[key.name] = value
                updates.append(key.value_set(value))
        if not self._search_attributes.get(SA_TENANT.name):  # started without them (e.g. by `temporal workflow start`)
            for key, value in ((SA_TENANT, self._status.tenant), (SA_REPO, self._status.repo), (SA_SHA, self._status.sha)):
                self._search_attributes[key.name] = value
                if workflow.info().typed_search_attributes.get(key) != value:
                    updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)
            self._memo()

    def _start_phase(self, state: PhaseState, run_state: str) -> None:
        state.state, state.started_at = run_state, state.started_at or workflow.now()
        self._set(status=run_state if run_state in ("awaiting_approval", "deploying") else "running", phase=state.name)
        self._github_phase_started(state, run_state)

    def _end_phase(self, state: PhaseState, end_state: str, message: str = "") -> None:
        state.state, state.ended_at, state.message = end_state, workflow.now(), message
        self._github_phase_ended(state, end_state, message)

    def _finish(self, status: str, error: str = "") -> None:
        for p in self._status.phases:
            if p.state == "pending":
                p.state = "skipped"
                self._github_status(p, "error", f"not run: the run {status}")
            elif p.ended_at is None and p.started_at is not None:  # cancelled at the gate or while deploying
                self._end_phase(p, status)
        self._status.approval.awaiting = False
        self._status.error = error
        self._status.ended_at = workflow.now()
        if status == "failed" and not any(p.type == PhaseType.DEPLOYMENT and p.state == "failed" for p in self._status.phases):
            self._notify("failed", error=error)
        self._set(status=status)

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> RunStatus:
        return self._status

    # -- the approval gate ---------------------------------------------------------------------------------
    def _decide(self, kind: str, inp: DecisionInput) -> Decision:
        decision = self._gate.decide(kind, inp, workflow.now(), self._status.status)
        if not decision.accepted:
            workflow.logger.warning("decision refused: %s", decision.refused_because)
        self._memo()
        return decision

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, inp: DecisionInput) -> None:
        self._decide("approve", inp)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, inp: DecisionInput) -> None:
        self._decide("reject", inp)

    @workflow.update(name=UPDATE_DECIDE)
    def decide(self, kind: str, inp: DecisionInput) -> Decision:
        """The CLI's way to decide: the validator answers at once and a refused decision writes no history."""
        return self._decide(kind, inp)

    @decide.validator
    def _validate_decide(self, kind: str, inp: DecisionInput) -> None:
        if kind not in ("approve", "reject"):
            raise ValueError(f"unknown decision {kind!r}; use approve or reject")
        refused = self._gate.refusal(kind, inp.by, self._status.status)
        if refused:
            raise ValueError(refused)
