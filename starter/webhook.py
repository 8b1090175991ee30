"""``katkit webhook``: GitHub webhooks start runs.

A delivery must carry a valid ``X-Hub-Signature-256`` (HMAC-SHA256 of the body with the webhook secret);
anything else gets 401 and starts nothing. A push to a link's home branch starts a run in each linked
tenant with ``github.auto_trigger``; a pull request opened, reopened or pushed against the home branch
starts one in each tenant with ``github.pull_requests``. Each ``X-GitHub-Delivery`` is claimed once in a
small SQLite file under the katkit home, so a delivery GitHub sends again starts nothing twice; a delivery
that could not reach Temporal is released, so GitHub's redelivery can start it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog

from katkit.config import LinkConfig
from katkit.errors import InfraError, KatkitError
from starter.api import Katkit
from starter.github_comments import COMMENT_EVENTS, CommentDecisions, parse_comment

log = structlog.get_logger("katkit.webhook")
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
KEEP_DELIVERIES_S = 30 * 24 * 3600
PR_ACTIONS = ("opened", "reopened", "synchronize", "ready_for_review")


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


class Deliveries:
    """The deliveries already handled, by ``X-GitHub-Delivery`` (kept 30 days)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, at REAL NOT NULL, event TEXT)")
            db.execute("DELETE FROM deliveries WHERE at < ?", (time.time() - KEEP_DELIVERIES_S,))

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def claim(self, delivery: str, event: str) -> bool:
        """True for a delivery not seen before (it is now taken), False for one GitHub sends again."""
        with self._db() as db:
            return db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)", (delivery, time.time(), event)).rowcount == 1

    def release(self, delivery: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery,))


@dataclass
class Target:
    tenant: str
    repo: str
    sha: str
    by: str
    ref: str
    untrusted: bool = False  # a pull request from a fork: its ci.sh gets no secrets and no GitHub token


@dataclass
class Outcome:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _same_repo(link: LinkConfig, full_name: str | None) -> bool:
    return bool(link.github and full_name and link.github.lower() == full_name.lower())


class WebhookApp:
    """Turns one signed delivery into runs. Transport-free, so tests can also call it directly."""

    def __init__(self, kk: Katkit, secret: str, deliveries: Deliveries) -> None:
        self.kk, self.secret, self.deliveries = kk, secret, deliveries

    def targets(self, event: str, payload: dict[str, Any]) -> list[Target]:
        config, found = self.kk.config, []
        if event == "push" and not payload.get("deleted") and str(payload.get("ref", "")).startswith("refs/heads/"):
            branch = payload["ref"].removeprefix("refs/heads/")
            by = f"github:{(payload.get('pusher') or {}).get('name') or (payload.get('sender') or {}).get('login', '?')}"
            for link in config.links:
                if _same_repo(link, (payload.get("repository") or {}).get("full_name")) and branch == link.branch:
                    found += [Target(t, link.repo, payload["after"], by, f"push to {branch}")
                              for t in link.tenants if config.tenant(t).github.auto_trigger]
        elif event == "pull_request" and payload.get("action") in PR_ACTIONS:
            pr = payload.get("pull_request") or {}
            base, head = pr.get("base") or {}, pr.get("head") or {}
            by = f"github:{(pr.get('user') or {}).get('login', '?')}"
            base_repo, head_repo = (base.get("repo") or {}).get("full_name"), (head.get("repo") or {}).get("full_name")
            fork = not head_repo or head_repo != base_repo  # a deleted fork has no head repo: not trusted either
            for link in config.links:
                if _same_repo(link, (base.get("repo") or {}).get("full_name")) and base.get("ref") == link.branch:
                    found += [Target(t, link.repo, head["sha"], by, f"pr {pr.get('number')}" + (" (fork)" if fork else ""),
                                     untrusted=fork)
                              for t in link.tenants if config.tenant(t).github.pull_requests]
        return found

    async def handle(self, headers: dict[str, str], body: bytes) -> Outcome:
        h = {k.lower(): v for k, v in headers.items()}
        if not signature_ok(self.secret, body, h.get("x-hub-signature-256")):
            return Outcome(401, {"error": "bad or missing X-Hub-Signature-256; check the webhook's secret"})
        event, delivery = h.get("x-github-event", ""), h.get("x-github-delivery", "")
        if not delivery:
            return Outcome(400, {"error": "no X-GitHub-Delivery header"})
        try:
            payload = json.loads(body)
        except ValueError:
            return Outcome(400, {"error": "the body is not JSON; set the webhook's content type to application/json"})
        if event == "ping":
            return Outcome(200, {"ok": "pong"})
        if not self.deliveries.claim(delivery, event):
            log.info("delivery seen before: nothing started", delivery=delivery, github_event=event)
            return Outcome(200, {"duplicate": delivery, "started": []})
        if event in COMMENT_EVENTS:  # /katkit approve|reject TENANT: a decision vouched for by GitHub
            command = parse_comment(event, payload)
            if command is None:
                return Outcome(200, {"ignored": "no /katkit command"})
            return Outcome(*await CommentDecisions(self.kk).handle(command))
        started, errors, infra = [], [], False
        for t in self.targets(event, payload):
            try:
                handle = await self.kk.start_run(t.tenant, t.repo, sha=t.sha, by=t.by, ref=t.ref, untrusted=t.untrusted)
                started.append(handle.run_id)
                log.info("run started by webhook", delivery=delivery, run_id=handle.run_id, existing=handle.existing)
            except KatkitError as exc:
                infra = infra or isinstance(exc, InfraError)
                errors.append(f"{t.tenant}: {exc}")
                log.warning("webhook could not start a run", delivery=delivery, tenant=t.tenant, error=str(exc))
        if infra and not started:
            self.deliveries.release(delivery)  # GitHub's redelivery may start it once Temporal or git is back
            return Outcome(503, {"errors": errors})
        return Outcome(202 if started else 200, {"started": started, "errors": errors})


def serve(app: WebhookApp, host: str, port: int, loop: asyncio.AbstractEventLoop) -> ThreadingHTTPServer:
    """An HTTP server (threads) whose requests run ``app.handle`` on ``loop``; the caller runs serve_forever."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "katkit-webhook"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._answer(Outcome(413, {"error": "payload too large"}))
            body = self.rfile.read(length)
            future = asyncio.run_coroutine_threadsafe(app.handle(dict(self.headers.items()), body), loop)
            self._answer(future.result())

        def do_GET(self) -> None:  # noqa: N802
            self._answer(Outcome(200, {"ok": "katkit webhook: POST GitHub deliveries here"}))

        def _answer(self, outcome: Outcome) -> None:
            data = json.dumps(outcome.body).encode()
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http", line=fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


async def run_webhook(kk: Katkit, secret: str, host: str, port: int, ready: Any = None) -> None:
    from katkit.preload import import_sdks

    import_sdks()  # deliveries are served on threads of their own: no two of them may import PyGithub at once
    app = WebhookApp(kk, secret, Deliveries(kk.settings.home / "webhook-deliveries.sqlite3"))
    server = serve(app, host, port, asyncio.get_running_loop())
    thread = threading.Thread(target=server.serve_forever, name="katkit-webhook", daemon=True)
    thread.start()
    if ready is not None:
        ready(server.server_address)
    try:
        await asyncio.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
