"""GitHub reporting of a run: a commit status per phase, and for the deployment phase a GitHub deployment with
its states. Updates are queued in the order the run makes them and sent by one background sender, so a retried
update never overtakes a later one; GitHub being down never fails the run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.reports import ReportActivities
    from katkit.config import LinkConfig, TenantConfig
    from katkit.models import GitHubReportInput, GitHubReportResult, GitHubUpdate, PhaseState, PhaseType, RunStatus
    from katkit.states import ErrorType, State
    from workflows.options import failure_text

GITHUB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=30), non_retryable_error_types=[ErrorType.BAD_INPUT])
GITHUB_BATCH_BUDGET = timedelta(minutes=5)  # one batch of updates, retries included; then the next batch
GITHUB_FLUSH = timedelta(seconds=60)  # how long a finished run waits for GitHub to take its last updates
COMMIT_STATE = {State.SUCCEEDED: "success", State.FAILED: "failure", State.REJECTED: "failure",
                State.SKIPPED: "success"}  # else: error
DEPLOYMENT_STATE = {State.SUCCEEDED: "success", State.FAILED: "failure"}  # else (rejected, cancelled...): error


class GitHubReporter:
    """Owned by a CommitRun of a GitHub link; every method is a no-op when reporting is off."""

    def __init__(self, link: LinkConfig | None, tenant: TenantConfig, status: RunStatus, *, enabled: bool) -> None:
        self.enabled = enabled and link is not None
        self.link, self.tenant, self.status = link, tenant, status
        self._queue: list[GitHubUpdate] = []
        self._sender: asyncio.Future[None] | None = None
        self._deployment_id: int | None = None
        self._deployment_opened = False

    def commit_status(self, phase: PhaseState, state: str, description: str) -> None:
        """The phase's commit status (context ``katkit/<tenant>/<phase>``)."""
        self._put(GitHubUpdate(kind="status", context=f"katkit/{self.status.tenant}/{phase.name}", state=state,
                               description=description))

    def phase_started(self, phase: PhaseState, state: State) -> None:
        if not self.enabled:
            return
        if state == State.AWAITING_APPROVAL:
            who = ", ".join(self.tenant.approval.approvers) or "an approver"
            self.commit_status(phase, "pending", f"awaiting approval by {who}")
        elif state == State.FROZEN and self.status.freeze.frozen_until:
            self.commit_status(phase, "pending", f"frozen until {self.status.freeze.frozen_until:%Y-%m-%d %H:%M} UTC")
        elif state == State.WAIT_TIMER:
            self.commit_status(phase, "pending", f"wait timer until {self.status.approval.deploy_not_before:%Y-%m-%d %H:%M} UTC")
        else:
            self.commit_status(phase, "pending", "deploying" if state == State.DEPLOYING else "running")
        if phase.type != PhaseType.DEPLOYMENT:
            return
        env = self.tenant.github_environment
        if not self._deployment_opened:
            self._deployment_opened = True
            st = self.status
            self._put(GitHubUpdate(kind="deployment", environment=env, production=self.tenant.env.upper() in ("PROD", "PRODUCTION"),
                                   description=f"{st.repo}@{st.sha[:12]} -> {self.tenant.name} by {st.started_by}"))
            self._put(GitHubUpdate(kind="deployment_status", state="queued", environment=env,
                                   description="awaiting approval" if state == State.AWAITING_APPROVAL else "queued"))
        if state == State.DEPLOYING:
            self._put(GitHubUpdate(kind="deployment_status", state="in_progress", environment=env, description="deploying"))

    def phase_ended(self, phase: PhaseState, state: State, message: str) -> None:
        if not self.enabled:
            return
        self.commit_status(phase, COMMIT_STATE.get(state, "error"), message or str(state))
        if phase.type == PhaseType.DEPLOYMENT and self._deployment_opened:
            self._put(GitHubUpdate(kind="deployment_status", state=DEPLOYMENT_STATE.get(state, "error"),
                                   environment=self.tenant.github_environment, description=message or str(state)))

    def _put(self, update: GitHubUpdate) -> None:
        if not self.enabled:
            return
        self._queue.append(update)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        assert self.link is not None
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                result: GitHubReportResult = await workflow.execute_activity_method(
                    ReportActivities.github_report,
                    GitHubReportInput(link=self.link, sha=self.status.sha, run_id=self.status.run_id,
                                      execution=workflow.info().run_id, updates=batch, deployment_id=self._deployment_id),
                    start_to_close_timeout=timedelta(seconds=60), schedule_to_close_timeout=GITHUB_BATCH_BUDGET,
                    retry_policy=GITHUB_RETRY, summary=f"GitHub: {len(batch)} update(s)",
                )
                self._deployment_id = result.deployment_id
            except ActivityError as exc:  # GitHub down for the whole budget: the run goes on, the batch is dropped
                workflow.logger.warning("GitHub updates given up: %s", failure_text(exc))

    async def flush(self) -> None:
        """Wait (a little) for the last updates to reach GitHub."""
        if self._sender is not None and not self._sender.done():
            await workflow.wait([self._sender], timeout=GITHUB_FLUSH.total_seconds())
