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
from katkit.config import LinkConfig, WebhookTarget
from katkit.errors import BadInput
from katkit.secrets import resolve
from katkit.models import GitHubReportInput, GitHubReportResult, NotifyInput
from katkit.states import ErrorType

NOTIFY_TIMEOUT_S = 5

log = structlog.get_logger("katkit.activities")


def target_url(target: WebhookTarget) -> str:
    """The URL a webhook target names, resolved on this worker (a missing one: BadInput, one line)."""
    if target.url is not None:
        return target.url
    ref = f"env:{target.url_env}" if target.url_env else f"file:{target.url_file}" if target.url_file else f"aws-sm:{target.aws_sm}"
    url = resolve(ref, what=f"webhook {target.reference}")
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"webhook {target.reference} does not hold an http(s) URL")
    return url


def slack_message(event: dict[str, object]) -> dict[str, object]:
    """A Slack incoming-webhook message for a katkit event: what happened, where, and (waiting) who must approve."""
    kind = str(event.get("event", ""))
    run, url = str(event.get("run_id", "")), str(event.get("url", ""))
    where = f"{event.get('repo')}@{str(event.get('sha', ''))[:12]} -> {event.get('tenant')}"
    words = {"awaiting_approval": "is waiting for approval", "approved": "was approved", "rejected": "was rejected",
             "timed_out": "timed out waiting for approval", "deployed": "deployed", "rolled_back": "rolled back",
             "failed": "failed"}.get(kind, kind.replace("_", " "))
    text = f"<{url}|{run}> {words}: {where}"
    if kind == "awaiting_approval":
        approvers = event.get("approvers") or []
        who = ", ".join(str(a) for a in approvers) if isinstance(approvers, list) and approvers else "any approver"
        text += f"\nWaiting for {who}: `katkit approve {run} --by <you>`"
    for key in ("image", "by", "reason", "error"):
        if event.get(key):
            text += f"\n{key}: {event[key]}"
    return {"text": text}


class ReportActivities:
    """``notify`` and ``github_report``: what needs the web UI's address (links back) and the GitHub token."""

    def __init__(self, *, ui_url: str = "http://localhost:8233", github_token: str | None = None) -> None:
        self.ui_url = ui_url
        self._github_token = github_token

    def _run_url(self, run_id: str) -> str:
        ns = activity.info().workflow_namespace
        return f"{self.ui_url}/namespaces/{ns}/workflows/{urllib.parse.quote(run_id, safe='')}"

    @activity.defn(name="notify")
    @translate_errors
    def notify(self, inp: NotifyInput) -> None:
        """POST the event to each webhook (katkit's JSON, or a Slack message); a failing one is retried, then given up
        (never fails a run). A target's reference is resolved here: its URL is never in history or a log."""
        event = dict(inp.event)
        if event.get("run_id"):
            event["url"] = self._run_url(str(event["run_id"]))
        failed = []
        for target in [*(WebhookTarget(url=u) for u in inp.urls), *inp.targets]:
            url = target_url(target)
            body = json.dumps(slack_message(event) if target.format == "slack" else event).encode()
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "katkit"})
            try:
                with urllib.request.urlopen(req, timeout=NOTIFY_TIMEOUT_S) as resp:
                    resp.read()
            except (OSError, ValueError) as exc:  # the reason, never the URL (a Slack URL's path is its token)
                failed.append(f"{target.reference}: {getattr(exc, 'reason', None) or getattr(exc, 'code', None) or type(exc).__name__}")
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
