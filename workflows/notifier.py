"""Webhook events of a run, sent in the background: retried a little, never blocking or failing the run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.reports import ReportActivities
    from katkit.config import WebhookTarget
    from katkit.models import NotifyInput, RunStatus

NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
NOTIFY_BUDGET = timedelta(seconds=20)
NOTIFY_TIMEOUT = timedelta(seconds=10)


class WebhookNotifier:
    """Posts ``{"event": ..., "run_id": ..., ...}`` to each of the tenant's webhooks, one activity per URL (a dead
    one's retries resend nothing to the others). ``flush`` waits for what is still on its way."""

    def __init__(self, targets: list[WebhookTarget], status: RunStatus, *, enabled: bool) -> None:
        self.targets = targets if enabled else []
        self.status = status
        self._sending: list[asyncio.Future[None]] = []

    def send(self, event: str, **detail: object) -> None:
        st = self.status
        payload = {"event": event, "run_id": st.run_id, "tenant": st.tenant, "repo": st.repo, "sha": st.sha,
                   "phase": st.phase, "at": workflow.now().isoformat(), **detail}
        for target in self.targets:  # a reference travels, never the URL it points at
            self._sending.append(workflow.start_activity_method(
                ReportActivities.notify, NotifyInput(targets=[target], event=payload),
                start_to_close_timeout=NOTIFY_TIMEOUT, schedule_to_close_timeout=NOTIFY_BUDGET,
                retry_policy=NOTIFY_RETRY, summary=f"webhook: {event}",
            ))

    async def flush(self) -> None:
        sending, self._sending = self._sending, []
        for task in sending:
            try:
                await task
            except BaseException as exc:  # noqa: BLE001 - a dead webhook is logged, never the run's failure
                workflow.logger.warning("webhook delivery gave up: %s", exc)
