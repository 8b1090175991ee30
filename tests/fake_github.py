"""A local GitHub on 127.0.0.1 for the tests: the REST endpoints katkit's PyGithub calls make (response
shapes as in GitHub's REST docs) under ``/api/v3``, and git's smart HTTP (``git http-backend``) under
``/git/<owner>/<name>.git`` behind HTTP basic auth with the token as password, like GitHub's.

Every request is recorded (method, path, query, JSON body, auth) so a test can assert the calls a run made,
in order. ``fail_next`` makes the next API requests fail with a given status (GitHub down, rate limits).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth: str


@dataclass
class FakeRepo:
    branches: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)  # newest last
    deployment_statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # newest last
    comments: list[dict[str, Any]] = field(default_factory=list)  # katkit's replies: {"on": "pull 7" | "commit SHA", "body"}


class FakeGitHub:
    def __init__(self, git_root: Path, token: str) -> None:
        self.git_root, self.token = git_root, token
        self.repos: dict[str, FakeRepo] = {}
        self.calls: list[Call] = []
        self.git_auth: list[str] = []  # the Authorization of each git request
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base}/api/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the test's side ---------------------------------------------------------------------------------
    def git_url(self, full_name: str) -> str:
        return f"{self.base}/git/{full_name}.git"

    def push(self, full_name: str, work: Path, *refs: str) -> None:
        """Push a working repository's refs (e.g. ``main``, ``HEAD:refs/pull/7/head``) into the served bare repo."""
        bare = self.git_root / f"{full_name}.git"
        if not bare.exists():
            subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
        subprocess.run(["git", "-C", str(work), "push", "--quiet", "--force", str(bare), *refs], check=True)
        repo = self.repos.setdefault(full_name, FakeRepo())
        for ref in refs:
            if ":" not in ref:
                repo.branches[ref] = subprocess.run(["git", "-C", str(work), "rev-parse", ref], check=True,
                                                    capture_output=True, text=True).stdout.strip()

    def add_pull(self, full_name: str, number: int, sha: str, base: str = "main", author: str = "carol",
                 state: str = "open", title: str = "a change") -> None:
        self.repos.setdefault(full_name, FakeRepo()).pulls[number] = {
            "url": f"{self.api_url}/repos/{full_name}/pulls/{number}", "id": number * 10, "number": number,
            "state": state, "title": title, "user": {"login": author, "id": 7, "type": "User"},
            "html_url": f"{self.base}/{full_name}/pull/{number}",
            "head": {"ref": f"feature-{number}", "sha": sha, "label": f"{author}:feature-{number}"},
            "base": {"ref": base, "sha": "0" * 40, "repo": {"full_name": full_name, "name": full_name.split("/")[1]}},
        }

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST"]

    # -- the server ----------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gh = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, data: Any = None, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode() if data is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                if url.path.startswith("/git/"):
                    return self._git(method, url.path.removeprefix("/git"), url.query)
                body = self._body()
                call = Call(method, url.path.removeprefix("/api/v3"), {k: v[0] for k, v in parse_qs(url.query).items()},
                            json.loads(body) if body else None, self.headers.get("Authorization", ""))
                with gh._lock:
                    gh.calls.append(call)
                    fail = gh.fail_next.pop(0) if gh.fail_next else None
                if fail:
                    return self._send(fail[0], {"message": "fake outage", "documentation_url": "https://docs.github.com"}, fail[1])
                if call.auth.split(" ", 1)[-1] != gh.token:
                    return self._send(401, {"message": "Bad credentials"})
                status, data = gh._api(call)
                self._send(status, data)

            def _git(self, method: str, path: str, query: str) -> None:
                auth = self.headers.get("Authorization", "")
                body = self._body()
                with gh._lock:
                    gh.git_auth.append(auth)
                user_pass = base64.b64decode(auth.removeprefix("Basic ")).decode() if auth.startswith("Basic ") else ""
                if user_pass.split(":", 1)[-1] != gh.token:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(gh.git_root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method, "REMOTE_USER": "x-access-token",
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode().split("\r\n"):
                    k, _, v = line.partition(":")
                    if k.lower() == "status":
                        status = int(v.split()[0])
                    elif k:
                        headers.append((k, v.strip()))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def _api(self, call: Call) -> tuple[int, Any]:
        m = re.match(r"^/repos/([^/]+/[^/]+)(/.*)?$", call.path)
        if not m or m.group(1) not in self.repos:
            return 404, {"message": "Not Found"}
        name, rest, repo = m.group(1), m.group(2) or "", self.repos[m.group(1)]
        repo_url = f"{self.api_url}/repos/{name}"
        with self._lock:
            if call.method == "GET" and (b := re.match(r"^/branches/(.+)$", rest)):
                sha = repo.branches.get(b.group(1))
                if sha is None:
                    return 404, {"message": "Branch not found"}
                return 200, {"name": b.group(1), "protected": False, "commit": {"sha": sha, "url": f"{repo_url}/commits/{sha}"}}
            if call.method == "GET" and (p := re.match(r"^/pulls/(\d+)$", rest)):
                pr = repo.pulls.get(int(p.group(1)))
                return (200, pr) if pr else (404, {"message": "Not Found"})
            if call.method == "GET" and rest == "/pulls":
                found = [pr for pr in repo.pulls.values() if pr["state"] == call.query.get("state", "open")
                         and ("base" not in call.query or pr["base"]["ref"] == call.query["base"])]
                return 200, sorted(found, key=lambda pr: -pr["number"])
            if call.method == "POST" and (s := re.match(r"^/statuses/([0-9a-f]{40})$", rest)):
                status = {"id": next(self._ids), "sha": s.group(1), **call.body, "created_at": _now()}
                repo.statuses.append(status)
                return 201, {**status, "url": f"{repo_url}/statuses/{s.group(1)}"}
            if call.method == "POST" and (c := re.match(r"^/(issues/\d+|commits/[0-9a-f]{40})/comments$", rest)):
                on = c.group(1).replace("issues/", "pull ").replace("commits/", "commit ")
                comment = {"id": next(self._ids), "body": call.body["body"], "user": {"login": "katkit-bot"},
                           "created_at": _now(), "url": f"{repo_url}/{c.group(1)}/comments"}
                repo.comments.append({"on": on, **comment})
                return 201, comment
            if call.method == "GET" and rest == "/deployments":
                found = [d for d in reversed(repo.deployments)
                         if all(d.get(k) == call.query[k] for k in ("sha", "environment") if k in call.query)]
                return 200, found
            if call.method == "POST" and rest == "/deployments":
                did = next(self._ids)
                sha = call.body["ref"]
                d = {"id": did, "url": f"{repo_url}/deployments/{did}", "sha": sha, "ref": sha, "task": "deploy",
                     "payload": call.body.get("payload", {}), "environment": call.body.get("environment", "production"),
                     "description": call.body.get("description"), "creator": {"login": "katkit-bot"},
                     "created_at": _now(), "updated_at": _now(),
                     "statuses_url": f"{repo_url}/deployments/{did}/statuses", "repository_url": repo_url,
                     "production_environment": call.body.get("production_environment", False),
                     "transient_environment": call.body.get("transient_environment", False)}
                repo.deployments.append(d)
                repo.deployment_statuses[did] = []
                return 201, d
            if (ds := re.match(r"^/deployments/(\d+)/statuses$", rest)):
                did = int(ds.group(1))
                if did not in repo.deployment_statuses:
                    return 404, {"message": "Not Found"}
                if call.method == "GET":
                    return 200, list(reversed(repo.deployment_statuses[did]))
                st = {"id": next(self._ids), "state": call.body["state"], "description": call.body.get("description", ""),
                      "target_url": call.body.get("target_url", ""), "created_at": _now(),
                      "url": f"{repo_url}/deployments/{did}/statuses/{next(self._ids)}", "deployment_url": f"{repo_url}/deployments/{did}"}
                repo.deployment_statuses[did].append(st)
                return 201, st
        return 404, {"message": "Not Found"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
