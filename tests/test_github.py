"""GitHub links against a local GitHub (tests/fake_github.py): refs and PRs through the REST API, commit
statuses and deployments in order, `katkit prs`, `katkit webhook` with signed deliveries, and clones over
git's smart HTTP with the token, which must show up nowhere else."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from activities.shards import contract_env
from katkit.temporal import free_port
from katkit.config import Settings, parse_config
from katkit.errors import BadInput, ConfigError, InfraError, RefNotFound, RunFailed
from katkit.models import Phase, PhaseType, RunStatus, ShardInput
from katkit.sample import commit_files
from starter.api import Katkit
from starter.webhook import Deliveries, WebhookApp, serve
from tests.conftest import cli_env, in_process_worker, status_is, wait_for
from tests.fake_github import FakeGitHub
from tests.test_replay import HISTORIES, assert_replays

TOKEN = "ghp_" + "k4tk1tS3cr3t" * 3
SECRET = "webhook-secret-for-tests"
KATKIT = [sys.executable, "-c", "from starter.cli import main; main()"]
FULL = "acme/app"
CI_SH = 'if [ -n "${GITHUB_TOKEN:-}" ]; then t=present; else t=absent; fi; echo "phase $KATKIT_PHASE, token $t"\n'
KATKITCONFIG = json.dumps([{"EnvName": "default", "WorkFlow": [
    {"Name": "BUILD", "PhaseType": 4, "Order": 1, "Parallelism": 1},
    {"Name": "DEPLOY", "PhaseType": 1, "Order": 2, "Parallelism": 1}]}])
SERVICE = json.dumps({"Name": "app", "DockerImage": "acme/app:<hubtag>"})


@pytest.fixture
def fake_gh(tmp_path: Path) -> Iterator[FakeGitHub]:
    (tmp_path / "served").mkdir()
    gh = FakeGitHub(tmp_path / "served", TOKEN)
    yield gh
    gh.close()


@pytest.fixture
def work(tmp_path: Path, fake_gh: FakeGitHub) -> Path:
    work = tmp_path / "app"
    commit_files(work, {"ci.sh": CI_SH, "katkitconfig.js": KATKITCONFIG, "servicedescription/servicedescription.js": SERVICE})
    fake_gh.push(FULL, work, "main")
    return work


def gh_config_yaml(fake_gh: FakeGitHub) -> str:
    return f"""
tenants:
  - {{name: d-app, env: DEV, github: {{auto_trigger: true, pull_requests: true, token_to_builder: true}}}}
  - {{name: b-app, env: BETA, approval: {{required: true, approvers: [bob]}}}}
github: {{api_url: "{fake_gh.api_url}"}}
links:
  - {{repo: app, url: "{fake_gh.git_url(FULL)}", github: {FULL}, branch: main, tenants: [d-app, b-app]}}
"""


@pytest.fixture
def gh_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"github_token": TOKEN})


@pytest.fixture
async def gh_kk(client, gh_settings: Settings, fake_gh: FakeGitHub, work: Path) -> Katkit:
    return Katkit(client, gh_settings, parse_config(gh_config_yaml(fake_gh)))


@pytest.fixture
async def gh_worker(client, gh_settings: Settings):
    async with in_process_worker(client, gh_settings):
        yield


async def finished(kk: Katkit, run_id: str) -> RunStatus:
    return await kk.client.get_workflow_handle(run_id, result_type=RunStatus).result()


def writes(gh: FakeGitHub) -> list[tuple[str, str, str]]:
    """(what, context or environment, state) of each write the fake GitHub accepted, in order."""
    out = []
    for c in gh.writes():
        if "/statuses/" in c.path and "/deployments/" not in c.path:
            out.append(("status", c.body["context"], c.body["state"]))
        elif c.path.endswith("/deployments"):
            out.append(("deployment", c.body["environment"], c.body["ref"][:12]))
        else:
            out.append(("deployment_status", c.path.split("/")[-2], c.body["state"]))
    return out


def expected_run(sha: str, deployment: str) -> list[tuple[str, str, str]]:
    return [
        ("status", "katkit/d-app/BUILD", "pending"), ("status", "katkit/d-app/DEPLOY", "pending"),
        ("status", "katkit/d-app/BUILD", "pending"), ("status", "katkit/d-app/BUILD", "success"),
        ("status", "katkit/d-app/DEPLOY", "pending"),
        ("deployment", "d-app", sha[:12]),
        ("deployment_status", deployment, "queued"), ("deployment_status", deployment, "in_progress"),
        ("status", "katkit/d-app/DEPLOY", "success"), ("deployment_status", deployment, "success"),
    ]


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


async def test_run_sets_statuses_and_deployments_in_order_and_the_token_stays_secret(
        gh_kk: Katkit, gh_worker, fake_gh: FakeGitHub, work: Path, gh_settings: Settings, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    argv: list[str] = []  # every process katkit starts in this process (git, the agent): its arguments
    popen_init = subprocess.Popen.__init__

    def spy(self, args, *a, **kw):
        argv.append(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        popen_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    sha1 = fake_gh.repos[FULL].branches["main"]
    handle = await gh_kk.start_run("d-app", "app", branch="main", by="alice")
    assert handle.sha == sha1
    st = await finished(gh_kk, handle.run_id)
    assert st.status == "succeeded" and st.ref == "branch main"
    dep1 = str(fake_gh.repos[FULL].deployments[0]["id"])
    assert writes(fake_gh) == expected_run(sha1, dep1)
    statuses = fake_gh.repos[FULL].statuses
    assert {s["target_url"] for s in statuses} == {gh_settings.run_url(handle.run_id)}
    assert statuses[-1]["description"] == "deployed acme/app:" + sha1
    deployment = fake_gh.repos[FULL].deployments[0]
    assert deployment["sha"] == sha1 and deployment["production_environment"] is False
    # the branch was resolved through the API, the clone went through git's credential mechanism
    assert fake_gh.calls[0].method == "GET" and fake_gh.calls[0].path == f"/repos/{FULL}/branches/main"
    assert any(a.startswith("Basic ") for a in fake_gh.git_auth)

    # a second deployment to the environment replaces the first: that one becomes inactive
    sha2 = commit_files(work, {"README.md": "two\n"})
    fake_gh.push(FULL, work, "main")
    before = len(fake_gh.writes())
    handle2 = await gh_kk.start_run("d-app", "app", branch="main", by="alice")
    assert handle2.sha == sha2
    assert (await finished(gh_kk, handle2.run_id)).status == "succeeded"
    dep2 = str(fake_gh.repos[FULL].deployments[1]["id"])
    second = writes(fake_gh)[len(expected_run(sha1, dep1)):]
    assert len(fake_gh.writes()) - before == len(second)
    assert second == [*expected_run(sha2, dep2), ("deployment_status", dep1, "inactive")]

    # ci.sh got the token (the tenant asked for it), so it could use it; nothing else has it
    logs = "".join([data.decode() async for _, data in gh_kk.follow_logs(handle.run_id, "BUILD", False)])
    assert "token present" in logs
    recorded = [await gh_kk.client.get_workflow_handle(h.run_id).fetch_history() for h in (handle, handle2)]
    await assert_replays(recorded)  # the GitHub commands are deterministic: the runs replay
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        for n, history in enumerate(recorded):
            (HISTORIES / f"github1_run_{n}.json").write_text(history.to_json())
    histories = [h.to_json() for h in recorded]
    files = [p.read_bytes().decode(errors="replace") for p in gh_settings.home.rglob("*") if p.is_file()]
    assert_no_token(*histories, *files)
    assert any("credential.helper=!f()" in a and "clone" in a for a in argv)  # git asked the helper ...
    assert_no_token(*argv)  # ... which reads the token from git's environment, never its arguments
    assert caplog.records  # the worker's and starter's logs were captured ...
    assert_no_token(caplog.text, *(str(r.msg) for r in caplog.records))  # ... and hold no token


async def test_a_tenant_that_did_not_ask_gets_no_token_and_a_rejected_deploy_reads_as_failed(
        gh_kk: Katkit, gh_worker, fake_gh: FakeGitHub, work: Path) -> None:
    handle = await gh_kk.start_run("b-app", "app", branch="main", by="alice")
    await wait_for(lambda: status_is(gh_kk, handle.run_id, "awaiting_approval"))
    await wait_for(lambda: ("deployment_status", "queued") in [(w[0], w[2]) for w in writes(fake_gh)])
    await gh_kk.reject(handle.run_id, "bob", "not today")
    with pytest.raises(RunFailed, match="rejected by bob: not today"):
        await gh_kk.wait(handle.run_id)
    dep = str(fake_gh.repos[FULL].deployments[0]["id"])
    assert writes(fake_gh) == [
        ("status", "katkit/b-app/BUILD", "pending"), ("status", "katkit/b-app/DEPLOY", "pending"),
        ("status", "katkit/b-app/BUILD", "pending"), ("status", "katkit/b-app/BUILD", "success"),
        ("status", "katkit/b-app/DEPLOY", "pending"),
        ("deployment", "b-app", handle.sha[:12]), ("deployment_status", dep, "queued"),
        ("status", "katkit/b-app/DEPLOY", "failure"), ("deployment_status", dep, "error"),
    ]
    descriptions = [s["description"] for s in fake_gh.repos[FULL].statuses]
    assert descriptions[4] == "awaiting approval by bob" and descriptions[-1] == "rejected by bob: not today"
    logs = "".join([data.decode() async for _, data in gh_kk.follow_logs(handle.run_id, "BUILD", False)])
    assert "token absent" in logs


async def test_prs_and_refs_resolve_through_the_api(gh_kk: Katkit, gh_worker, fake_gh: FakeGitHub, work: Path,
                                                    gh_settings: Settings, tmp_path: Path) -> None:
    pr_sha = commit_files(work, {"README.md": "feature\n"})
    fake_gh.push(FULL, work, "HEAD:refs/pull/7/head")
    fake_gh.add_pull(FULL, 7, pr_sha, author="carol", title="add a feature")
    fake_gh.add_pull(FULL, 8, pr_sha, base="develop")
    fake_gh.add_pull(FULL, 9, pr_sha, state="closed")
    pulls = await gh_kk.prs("app")
    assert [(p.number, p.sha, p.author, p.runs) for p in pulls] == [(7, pr_sha, "carol", {})]

    handle = await gh_kk.start_run("d-app", "app", pr=7, by="carol")
    assert handle.sha == pr_sha
    st = await finished(gh_kk, handle.run_id)
    assert st.ref == "pr 7"
    pulls = await wait_for(lambda: _prs_with_runs(gh_kk))
    assert pulls[0].runs == {"d-app": "succeeded"}

    with pytest.raises(BadInput, match="not the link's home branch"):
        await gh_kk.start_run("d-app", "app", pr=8)
    with pytest.raises(BadInput, match="pull request #9 of acme/app is closed; pick an open one"):
        await gh_kk.start_run("d-app", "app", pr=9)
    with pytest.raises(RefNotFound, match="pull request #99 of acme/app was not found"):
        await gh_kk.start_run("d-app", "app", pr=99)
    with pytest.raises(RefNotFound, match="branch 'nope'"):
        await gh_kk.start_run("d-app", "app", branch="nope")

    config = tmp_path / "gh.yaml"
    config.write_text(gh_config_yaml(fake_gh))
    env = {**cli_env(gh_settings, config), "KATKIT_GITHUB_TOKEN": TOKEN}
    proc = subprocess.run([*KATKIT, "prs", "--repo", "app"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "#7" in proc.stdout and pr_sha[:12] in proc.stdout and "d-app: succeeded" in proc.stdout
    assert "#8" not in proc.stdout


async def _prs_with_runs(kk: Katkit):
    pulls = await kk.prs("app")
    return pulls if pulls and pulls[0].runs else None


async def test_github_down_never_blocks_a_run_and_fails_a_start_with_one_line(
        gh_kk: Katkit, gh_worker, fake_gh: FakeGitHub, work: Path, gh_settings: Settings, tmp_path: Path) -> None:
    sha = fake_gh.repos[FULL].branches["main"]
    fake_gh.fail_next = [(503, {}), (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 2)}),
                         (429, {"Retry-After": "1"})]
    handle = await gh_kk.start_run("d-app", "app", sha=sha[:10])  # no API call: the sha comes from git
    st = await finished(gh_kk, handle.run_id)
    assert st.status == "succeeded"
    assert fake_gh.fail_next == []  # both failures were met, and retried
    accepted = [(s["context"], s["state"]) for s in fake_gh.repos[FULL].statuses]
    assert accepted == [(w[1], w[2]) for w in expected_run(sha, "") if w[0] == "status"]
    build = st.phases[0]
    assert (build.ended_at - build.started_at).total_seconds() < 5  # the phase did not wait for GitHub

    first = await gh_kk.client.get_workflow_handle(handle.run_id).describe()
    fake_gh.fail_next = [(503, {})]
    with pytest.raises(InfraError, match="answered 503"):
        await gh_kk.start_run("d-app", "app", branch="main")
    config = tmp_path / "gh.yaml"
    config.write_text(gh_config_yaml(fake_gh))
    for fail, code, line in (((502, {}), 1, "answered 502"), ((401, {}), 2, "refused the token"),
                             ((403, {"X-RateLimit-Remaining": "0"}), 1, "is rate-limiting katkit")):
        fake_gh.fail_next = [fail]
        proc = subprocess.run([*KATKIT, "run", "--tenant", "d-app", "--repo", "app",
                               "--branch", "main"], env={**cli_env(gh_settings, config), "KATKIT_GITHUB_TOKEN": TOKEN},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code and line in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert TOKEN not in proc.stderr
    latest = await gh_kk.client.get_workflow_handle(handle.run_id).describe()
    assert latest.run_id == first.run_id  # no failed start left a new execution of the run


async def test_clone_without_the_token_is_refused_with_one_line(client, settings: Settings, fake_gh: FakeGitHub,
                                                                 work: Path) -> None:
    kk = Katkit(client, settings, parse_config(gh_config_yaml(fake_gh)))  # no KATKIT_GITHUB_TOKEN
    with pytest.raises(ConfigError, match="refused katkit's credentials; set KATKIT_GITHUB_TOKEN"):
        await kk.start_run("d-app", "app", sha=fake_gh.repos[FULL].branches["main"])


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_webhook_verifies_signatures_starts_runs_once_per_delivery(
        gh_kk: Katkit, gh_worker, fake_gh: FakeGitHub, work: Path, gh_settings: Settings) -> None:
    import asyncio

    app = WebhookApp(gh_kk, SECRET, Deliveries(gh_settings.home / "deliveries.sqlite3"))
    server = serve(app, "127.0.0.1", 0, asyncio.get_running_loop())
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    sha = fake_gh.repos[FULL].branches["main"]
    push = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"full_name": FULL},
                       "pusher": {"name": "dave"}}).encode()

    async def call(body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        return await asyncio.to_thread(post, url, body, headers)

    try:
        delivery = str(uuid.uuid4())
        for bad in ({}, {"X-Hub-Signature-256": signed(push, "wrong")}, {"X-Hub-Signature-256": signed(push + b" ")}):
            code, body = await call(push, {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, **bad})
            assert code == 401 and "X-Hub-Signature-256" in body["error"]
        assert [w async for w in gh_kk.client.list_workflows(f'KatkitSha="{sha}"')] == []

        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signed(push)}
        code, body = await call(push, headers)
        assert code == 202 and body["errors"] == []
        assert [r.split("-")[1] for r in body["started"]] == ["d"]  # d-app has auto_trigger, b-app does not
        st = await finished(gh_kk, body["started"][0])
        assert st.status == "succeeded" and st.started_by == "github:dave" and st.ref == "push to main"

        code, again = await call(push, headers)  # GitHub redelivers: nothing starts, even with the run closed
        assert code == 200 and again == {"duplicate": delivery, "started": []}
        runs = [w async for w in gh_kk.client.list_workflows(f'KatkitSha="{sha}"')]
        assert len(runs) == 1

        other = json.dumps({"ref": "refs/heads/feature", "after": sha, "repository": {"full_name": FULL}}).encode()
        code, body = await call(other, {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                                        "X-Hub-Signature-256": signed(other)})
        assert code == 200 and body["started"] == []  # not the home branch

        pr_sha = commit_files(work, {"README.md": "from a PR\n"})
        fake_gh.push(FULL, work, "HEAD:refs/pull/9/head")
        pr = json.dumps({"action": "opened", "number": 9, "pull_request": {
            "number": 9, "user": {"login": "erin"}, "head": {"sha": pr_sha, "ref": "f", "repo": {"full_name": FULL}},
            "base": {"ref": "main", "repo": {"full_name": FULL}}}}).encode()
        code, body = await call(pr, {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
                                     "X-Hub-Signature-256": signed(pr)})
        assert code == 202 and len(body["started"]) == 1
        st = await finished(gh_kk, body["started"][0])
        assert st.sha == pr_sha and st.ref == "pr 9" and st.tenant == "d-app" and not st.untrusted

        fork_sha = commit_files(work, {"README.md": "from a fork\n"})
        fake_gh.push(FULL, work, "HEAD:refs/pull/10/head")
        fork = json.dumps({"action": "opened", "number": 10, "pull_request": {
            "number": 10, "user": {"login": "mallory"}, "head": {"sha": fork_sha, "ref": "f", "repo": {"full_name": "mallory/fork"}},
            "base": {"ref": "main", "repo": {"full_name": FULL}}}}).encode()
        code, body = await call(fork, {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
                                       "X-Hub-Signature-256": signed(fork)})
        assert code == 202 and len(body["started"]) == 1
        st = await finished(gh_kk, body["started"][0])
        assert st.untrusted and st.ref == "pr 10 (fork)"  # a fork's code gets no secrets and no GitHub token
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_without_a_secret_is_one_line_exit_2(gh_settings: Settings, tmp_path: Path, fake_gh: FakeGitHub) -> None:
    config = tmp_path / "gh.yaml"
    config.write_text(gh_config_yaml(fake_gh))
    proc = subprocess.run([*KATKIT, "webhook", "--port", "0"],
                          env=cli_env(gh_settings, config), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "KATKIT_GITHUB_WEBHOOK_SECRET is not set" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_github_config_links_and_bad_keys() -> None:
    cfg = parse_config("""
tenants: [{name: t, env: DEV}]
links:
  - {repo: a, url: "https://github.com/acme/a.git", tenants: [t]}
  - {repo: b, url: "git@github.com:acme/b.git", tenants: [t]}
  - {repo: c, url: "https://ghe.example.com/team/c", github: team/c, github_api_url: "https://ghe.example.com/api/v3", tenants: [t]}
  - {repo: d, url: "/srv/git/d", tenants: [t]}
""")
    assert [(link.github, link.github_api_url) for link in cfg.links] == [
        ("acme/a", "https://api.github.com"), ("acme/b", "https://api.github.com"),
        ("team/c", "https://ghe.example.com/api/v3"), (None, None)]
    with pytest.raises(ConfigError, match="unknown key 'tenants.0.github.auto_trigered'"):
        parse_config("tenants: [{name: t, env: DEV, github: {auto_trigered: true}}]\n")


def test_the_token_reaches_a_builder_only_for_github_links() -> None:
    cfg = parse_config("""
tenants: [{name: t, env: DEV, github: {token_to_builder: true}}, {name: u, env: DEV}]
links:
  - {repo: a, url: "https://github.com/acme/a.git", tenants: [t, u]}
  - {repo: d, url: "https://git.example.com/team/d.git", tenants: [t]}
""")
    def env(tenant: str, repo: str) -> dict[str, str]:
        inp = ShardInput(run_id="r", attempt_key="x", tenant=cfg.tenant(tenant), link=cfg.link(repo), sha="0" * 40,
                         phase=Phase(name="BUILD", type=PhaseType.EXECUTION), shard_index=0,
                         deadline=datetime.now(timezone.utc))
        return contract_env(inp, TOKEN)

    assert env("t", "a")["GITHUB_TOKEN"] == TOKEN
    assert "GITHUB_TOKEN" not in env("u", "a")  # the tenant did not ask for it
    assert "GITHUB_TOKEN" not in env("t", "d")  # another host never gets the GitHub token


async def test_katkit_webhook_command_serves_signed_deliveries(gh_worker, gh_kk: Katkit, fake_gh: FakeGitHub,
                                                               gh_settings: Settings, tmp_path: Path) -> None:
    import asyncio

    config = tmp_path / "gh.yaml"
    config.write_text(gh_config_yaml(fake_gh))
    port = free_port()
    env = {**cli_env(gh_settings, config), "KATKIT_GITHUB_TOKEN": TOKEN, "KATKIT_GITHUB_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([*KATKIT, "webhook", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on http://127.0.0.1:" in await asyncio.to_thread(proc.stdout.readline)
        sha = fake_gh.repos[FULL].branches["main"]
        push = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"full_name": FULL},
                           "pusher": {"name": "dave"}}).encode()
        url = f"http://127.0.0.1:{port}/"
        code, _ = await asyncio.to_thread(post, url, push, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1",
                                                            "X-Hub-Signature-256": signed(push, "nope")})
        assert code == 401
        code, body = await asyncio.to_thread(post, url, push, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1",
                                                               "X-Hub-Signature-256": signed(push)})
        assert code == 202 and len(body["started"]) == 1
        assert (await finished(gh_kk, body["started"][0])).status == "succeeded"
        assert (gh_settings.home / "webhook-deliveries.sqlite3").exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert TOKEN not in err and SECRET not in err
