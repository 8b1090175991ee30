"""Telling the world: webhook events and GitHub commit statuses and deployments. Never a run's failure: the
workflow gives a report up after a budget of retries and goes on."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import translate_errors
from katkit.config import LinkConfig
from katkit.models import GitHubReportInput, GitHubReportResult, NotifyInput
from katkit.states import ErrorType

NOTIFY_TIMEOUT_S = 5

log = structlog.get_logger("katkit.activities")


class ReportActivities:
    """``notify`` and ``github_report``: what needs the web UI's address (links back) and the GitHub token."""

    def __init__(self, *, ui_url: str = "http://localhost:8233", github_token: str | None = None) -> None:
        self.ui_url = ui_url
        self._github_token = github_token

    def _run_url(self, run_id: str) -> str:
        ns = activity.info().workflow_namespace
        return f"{self.ui_url}/namespaces/{ns}/workflows/{urllib.parse.quote(run_id, safe='')}"

    @activity.defn(name="notify")
    def notify(self, inp: NotifyInput) -> None:
        """POST the event as JSON to each webhook; a failing one is retried, then given up (never fails a run)."""
        event = dict(inp.event)
        if event.get("run_id"):
            event["url"] = self._run_url(str(event["run_id"]))
        body = json.dumps(event).encode()
        failed = []
        for url in inp.urls:
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "katkit"})
            try:
                with urllib.request.urlopen(req, timeout=NOTIFY_TIMEOUT_S) as resp:
                    resp.read()
            except (OSError, ValueError) as exc:
                failed.append(f"{url}: {exc}")
        if failed:
            raise ApplicationError(f"webhook delivery failed: {'; '.join(failed)[:300]}", type=ErrorType.WEBHOOK_FAILED)

    def _token(self, link: LinkConfig) -> str | None:
        return link.github_token(self._github_token)

    @activity.defn(name="github_report")
    @translate_errors
    def github_report(self, inp: GitHubReportInput) -> GitHubReportResult:
        """Tell GitHub what the run did, in order: commit statuses, its deployment and the deployment's states.

        Progress is heartbeated, so a retry after GitHub failed half-way resumes where it stopped.
        """
        token = self._token(inp.link)
        if not token:
            log.warning("no KATKIT_GITHUB_TOKEN on this worker: GitHub statuses and deployments are not sent",
                        repo=inp.link.github)
            return GitHubReportResult(deployment_id=inp.deployment_id)
        from katkit.gh import GitHubRepo

        gh = GitHubRepo(inp.link, token)
        details = activity.info().heartbeat_details
        done, deployment_id = (int(details[0]), details[1]) if len(details) >= 2 else (0, inp.deployment_id)
        target = self._run_url(inp.run_id)
        for i, update in enumerate(inp.updates[done:], start=done):
            if update.kind == "status":
                gh.commit_status(inp.sha, update, target)
            elif update.kind == "deployment":
                deployment_id = gh.deployment(inp.sha, update, f"{inp.run_id}/{inp.execution}")
            elif deployment_id is not None:
                gh.deployment_status(deployment_id, update, target)
            activity.heartbeat(i + 1, deployment_id)
        return GitHubReportResult(deployment_id=deployment_id, sent=len(inp.updates))
