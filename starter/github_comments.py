"""Decisions from GitHub comments: ``/katkit approve p-taskrunner [comment]`` or ``/katkit reject p-taskrunner
<reason>`` on a pull request or a commit, delivered through the signed webhook (``katkit webhook``).

GitHub is the identity provider: the comment's author is a GitHub login, and an approver listed with ``github:
LOGIN`` in that tenant may decide. ``katkit webhook`` trusts the delivery (GitHub's HMAC), then vouches for the
login by signing the decision with its own key (``KATKIT_WEBHOOK_SIGNING_KEY``), which the tenant lists as
``approval.webhook_key``: the run verifies that signature like any other, so a signal that merely claims a GitHub
login proves nothing. Every command gets a reply comment: what was decided, or why nothing changed.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog

from katkit.errors import BadInput, KatkitError, UnknownName
from katkit.models import DecisionInput, DecisionProof
from katkit.names import commit_run_id
from katkit.proof import ProofError, decision_message, sign_with_ssh_keygen, signer_fingerprint
from starter.api import Katkit

if TYPE_CHECKING:
    from katkit.gh import GitHubRepo

log = structlog.get_logger("katkit.webhook")
COMMENT_EVENTS = ("issue_comment", "commit_comment")
COMMAND = re.compile(r"^\s*/katkit\s+(approve|reject)\s+(\S+)[ \t]*(.*)$", re.MULTILINE)


@dataclass
class CommentCommand:
    kind: str
    tenant: str
    text: str
    login: str
    full_name: str
    pull: int | None
    sha: str | None


def parse_comment(event: str, payload: dict[str, Any]) -> CommentCommand | None:
    """The ``/katkit`` command of a new comment on a PR or a commit, or None when the delivery holds none."""
    comment = payload.get("comment") or {}
    if payload.get("action") != "created" or not isinstance(comment.get("body"), str):
        return None
    m = COMMAND.search(comment["body"])
    if m is None:
        return None
    login = (comment.get("user") or {}).get("login") or ""
    full_name = (payload.get("repository") or {}).get("full_name") or ""
    if event == "issue_comment":
        issue = payload.get("issue") or {}
        if not issue.get("pull_request"):
            return None  # a comment on an issue: no commit to decide on
        return CommentCommand(m.group(1), m.group(2), m.group(3).strip(), login, full_name, int(issue["number"]), None)
    return CommentCommand(m.group(1), m.group(2), m.group(3).strip(), login, full_name, None, comment.get("commit_id"))


class CommentDecisions:
    """Turns one ``/katkit`` comment into a verified decision on the run of that sha in that tenant, and replies."""

    def __init__(self, kk: Katkit) -> None:
        self.kk = kk

    async def handle(self, cmd: CommentCommand) -> tuple[int, dict[str, Any]]:
        from katkit.gh import GitHubRepo

        link = next((lk for lk in self.kk.config.links
                     if lk.github and lk.github.lower() == cmd.full_name.lower()), None)
        if link is None:
            return 200, {"ignored": f"{cmd.full_name} is not a linked repository"}
        gh = GitHubRepo(link, self.kk.settings.github_token)
        try:
            answer, decided = await self._decide(cmd, link.repo, link.tenants, gh)
        except KatkitError as exc:
            answer, decided = f"katkit: nothing changed: {exc}", None
        log.info("comment decision", login=cmd.login, tenant=cmd.tenant, kind=cmd.kind, decided=decided, answer=answer)
        try:
            await asyncio.to_thread(gh.reply, f"@{cmd.login} {answer}", pull=cmd.pull, sha=cmd.sha)
        except KatkitError as exc:  # the decision stands; the reply is a courtesy
            log.warning("could not reply on GitHub", error=str(exc))
        return (202 if decided else 200), {"decided": decided, "answer": answer}

    async def _decide(self, cmd: CommentCommand, repo: str, tenants: list[str], gh: GitHubRepo) -> tuple[str, str | None]:
        if cmd.tenant not in tenants:
            return f"katkit: nothing changed: {repo} is not linked to tenant {cmd.tenant} (linked: {', '.join(tenants)})", None
        policy = self.kk.config.tenant(cmd.tenant).approval
        approver = next((a for a in policy.identities if a.github and a.github.lower() == cmd.login.lower()), None)
        if approver is None:
            return (f"katkit: nothing changed: {cmd.login} is not an approver of {cmd.tenant} on GitHub "
                    f"(tenant {cmd.tenant} lists no approver with github: {cmd.login})"), None
        key = self.kk.settings.webhook_signing_key
        if key is None or not policy.webhook_key:
            return (f"katkit: nothing changed: {cmd.tenant} takes no decisions from GitHub comments (the webhook needs "
                    "KATKIT_WEBHOOK_SIGNING_KEY and the tenant approval.webhook_key)"), None
        if cmd.sha:
            sha = cmd.sha
        elif cmd.pull is not None:
            sha = await asyncio.to_thread(gh.pull_sha, cmd.pull)
        else:
            return "katkit: nothing changed: the comment is on neither a pull request nor a commit", None
        run_id = commit_run_id(cmd.tenant, repo, sha)
        try:
            st = await self.kk.status(run_id)
        except UnknownName:
            return f"katkit: nothing changed: no run of {sha[:12]} in {cmd.tenant}", None
        now = datetime.now(timezone.utc)
        execution = (await self.kk.client.get_workflow_handle(run_id).describe()).run_id or ""  # this attempt only
        message = decision_message(run_id=run_id, execution=execution, sha=st.sha, tenant=st.tenant, kind=cmd.kind,
                                   by=approver.name,
                                   text=cmd.text, signed_at=now, github=approver.github or "")
        try:
            signature = await asyncio.to_thread(sign_with_ssh_keygen, str(key), message)
        except ProofError as exc:
            raise BadInput(f"the webhook cannot sign: {exc}") from None
        inp = DecisionInput(by=approver.name, **({"comment": cmd.text} if cmd.kind == "approve" else {"reason": cmd.text}),
                            proof=DecisionProof(signature=signature, signed_at=now, key=signer_fingerprint(signature),
                                                github=approver.github or ""))
        d = await self.kk._decide(run_id, cmd.kind, inp)
        verb = "approved" if cmd.kind == "approve" else "rejected"
        return f"katkit: {verb} {run_id} as {d.by} ({d.verification})", run_id
