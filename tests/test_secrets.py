"""Tenant secrets: declared by reference, resolved in the activity that starts a builder, given to ci.sh, and
masked in every log (raw, base64, URL-encoded, JSON-escaped, each line of a multi-line value, also split across
reads). Then every place a value could leak is scanned: histories, the log store, captured logs, process args."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from katkit.config import parse_config
from katkit.errors import RunFailed
from katkit.sample import commit_files
from katkit.secrets import MASK, Masker, forms
from starter.api import Katkit
from tests.conftest import wait_for

NPM = "npm_s3cr3t/Value+x=&y"
MULTI = "first-line-of-secret\nsecond-line-of-secret"
SLACK_PATH = "/services/T000/B000/slack-hook-token-xyz"
PY = sys.executable

CONFIG = """
tenants:
  - name: d-sec
    env: DEV
    secrets: {{NPM_TOKEN: "env:KATKIT_TEST_NPM", MULTI: "file:{multi}"}}
    phases_with_secrets: [BUILD]
    webhooks:
      - {{url_env: KATKIT_TEST_HOOK, format: slack}}
      - url_file:{hook_file}
  - name: d-short
    env: DEV
    secrets: {{TINY: "env:KATKIT_TEST_TINY"}}
  - name: d-missing
    env: DEV
    secrets: {{GONE: "env:KATKIT_TEST_NOT_SET"}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-sec, d-short, d-missing]}}
"""

PRINTS = f"""
echo "raw: $NPM_TOKEN"
echo "b64: $(printf %s "$NPM_TOKEN" | base64 -w0)"
echo "url: $({PY} -c 'import os,urllib.parse;print(urllib.parse.quote(os.environ["NPM_TOKEN"], safe=""))')"
echo "json: $({PY} -c 'import os,json;print(json.dumps({{"t": os.environ["MULTI"]}}))')"
echo "multi:"
echo "$MULTI"
printf 'split: '
for i in $(seq 0 $((${{#NPM_TOKEN}}-1))); do printf '%s' "${{NPM_TOKEN:$i:1}}"; sleep 0.07; done
echo
echo "env names: $(env | grep -c -e NPM_TOKEN -e MULTI)"
"""


def readable(history: object) -> str:
    """A history as JSON with every payload's data decoded (history JSON holds payloads base64-encoded)."""
    import base64

    raw = json.loads(history.to_json())  # type: ignore[attr-defined]
    decoded: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "data" and isinstance(v, str):
                    decoded.append(base64.b64decode(v).decode(errors="replace"))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(raw)
    return json.dumps(raw) + "\n".join(decoded)


class Hook(BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, object]]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.got.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.got = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def secret_env(monkeypatch, tmp_path: Path, hook_server: str) -> dict[str, Path]:
    multi = tmp_path / "multi.txt"
    multi.write_text(MULTI + "\n")
    hook_file = tmp_path / "hook.url"
    hook_file.write_text(f"{hook_server}/plain/hook-file-token-abc\n")
    monkeypatch.setenv("KATKIT_TEST_NPM", NPM)
    monkeypatch.setenv("KATKIT_TEST_HOOK", hook_server + SLACK_PATH)
    monkeypatch.setenv("KATKIT_TEST_TINY", "abc")
    return {"multi": multi, "hook_file": hook_file}


def secret_katkit(kk: Katkit, repo: Path, secret_env: dict[str, Path]) -> Katkit:
    """The test's Katkit with CONFIG's tenants (secrets, webhook targets) on the session's server."""
    config = parse_config(CONFIG.format(url=repo, multi=secret_env["multi"], hook_file=secret_env["hook_file"]))
    return Katkit(kk.client, kk.settings, config)


def test_masking_covers_every_form_and_a_value_split_across_reads() -> None:
    masker = Masker([NPM, MULTI])
    for form in forms(NPM) | forms(MULTI):
        assert masker.mask_bytes(b"<" + form + b">") == b"<***>", form
    stream = b"a " + NPM.encode() + b" b " + NPM.encode()
    out, read = b"", 0
    for end in range(1, len(stream) + 1):  # one byte more each time, as a slow writer flushes
        data = stream[read:end]
        cut = masker.safe_prefix(data, final=end == len(stream))
        out += masker.mask_bytes(data[:cut])
        read += cut
    assert out == b"a *** b ***"


def test_a_value_under_four_characters_or_a_bad_reference_is_one_line(tmp_path: Path) -> None:
    from katkit.errors import ConfigError

    with pytest.raises(ConfigError, match="'vault:x' is not a secret reference; use env:VAR"):
        parse_config("tenants:\n  - {name: a, env: DEV, secrets: {X: 'vault:x'}}\n")
    with pytest.raises(ConfigError, match="is not an environment variable name"):
        parse_config("tenants:\n  - {name: a, env: DEV, secrets: {'1X': 'env:A'}}\n")
    with pytest.raises(ConfigError, match="deploy_fork_prs: true needs approval.required: true"):
        parse_config("tenants:\n  - {name: a, env: DEV, deploy_fork_prs: true}\n")
    with pytest.raises(ConfigError, match="neither an http"):
        parse_config("tenants:\n  - {name: a, env: DEV, webhooks: ['ftp://x']}\n")


@pytest.mark.usefixtures("worker")
async def test_secrets_reach_ci_sh_and_no_log_history_or_process_shows_them(
        kk: Katkit, repo: Path, secret_env: dict[str, Path], capfd, caplog) -> None:
    ks = secret_katkit(kk, repo, secret_env)
    sha = commit_files(repo, {"ci.sh": PRINTS + "exit 0\n"})
    handle = await ks.start_run("d-sec", "taskrunner", sha=sha, by="bob")
    args: list[str] = []
    while (await ks.status(handle.run_id)).status == "running":  # the processes while ci.sh prints
        args.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        await asyncio.sleep(0.2)
    st = await ks.wait(handle.run_id)
    log = "".join(data.decode() for _, data in [x async for x in ks.follow_logs(handle.run_id, "BUILD")])
    assert "raw: ***" in log and "b64: ***" in log and "url: ***" in log, log
    assert 'json: {"t": "***"}' in log and "multi:\n***\nsplit: ***\n" in log, log  # the whole value at once
    assert "env names: 2" in log  # ci.sh had both
    unit = "".join(data.decode() for _, data in [x async for x in ks.follow_logs(handle.run_id, "UNIT_TEST")])
    assert "env names: 0" in unit  # phases_with_secrets: only BUILD gets them
    # the webhook targets were resolved by the worker: the Slack one got a Slack message, the file one JSON
    await wait_for(lambda: len([p for p, _ in Hook.got]) >= 2)
    paths = {p for p, _ in Hook.got}
    assert SLACK_PATH in paths and "/plain/hook-file-token-abc" in paths
    slack = next(b for p, b in Hook.got if p == SLACK_PATH)
    assert set(slack) == {"text"} and handle.run_id in str(slack["text"])

    history = readable(await kk.client.get_workflow_handle(handle.run_id).fetch_history())
    store = "".join(p.read_text(errors="replace") for p in Path(kk.settings.home).rglob("*") if p.is_file()
                    and "git" not in p.parts)
    out, err = capfd.readouterr()
    everywhere = {"history": history, "home (log store, builders, state)": store, "stdout": out, "stderr": err,
                  "captured logs": caplog.text, "process args": "".join(args), "status": st.model_dump_json()}
    for value in (NPM, MULTI, SLACK_PATH, "hook-file-token-abc"):
        for form in forms(value):
            for where, text in everywhere.items():
                assert form.decode(errors="replace") not in text, f"{value!r} ({form!r}) found in {where}"
    assert "env:KATKIT_TEST_NPM" in history  # the reference is what travels


@pytest.mark.usefixtures("worker")
async def test_a_missing_or_too_short_secret_fails_the_phase_in_one_line(kk: Katkit, repo: Path,
                                                                        secret_env: dict[str, Path]) -> None:
    ks = secret_katkit(kk, repo, secret_env)
    sha = commit_files(repo, {"ci.sh": "echo hi\n"})
    gone = await ks.start_run("d-missing", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="secret GONE of tenant d-missing: env:KATKIT_TEST_NOT_SET is not set in the "
                                        "worker's environment"):
        await ks.wait(gone.run_id)
    short = await ks.start_run("d-short", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="secret TINY of tenant d-short: the value of env:KATKIT_TEST_TINY is shorter "
                                        "than 4 characters"):
        await ks.wait(short.run_id)
    history = await kk.client.get_workflow_handle(short.run_id).fetch_history()
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) == 1  # bad input: not retried


@pytest.mark.usefixtures("worker")
async def test_a_forks_pull_request_gets_no_secrets_and_says_so(kk: Katkit, repo: Path,
                                                                secret_env: dict[str, Path]) -> None:
    ks = secret_katkit(kk, repo, secret_env)
    sha = commit_files(repo, {"ci.sh": 'echo "npm=[${NPM_TOKEN:-none}]"\n'})
    handle = await ks.start_run("d-sec", "taskrunner", sha=sha, by="github:stranger", untrusted=True)
    st = await ks.wait(handle.run_id)
    log = "".join(data.decode() for _, data in [x async for x in ks.follow_logs(handle.run_id, "BUILD")])
    assert "npm=[none]" in log and st.untrusted
    deploy = next(p for p in st.phases if p.type == "deployment")  # a fork's servicedescription.js never deploys
    assert deploy.state == "skipped" and "a pull request from a fork deploys nothing" in deploy.message
    assert st.deployed is None and await ks.deployments("d-sec", "taskrunner") == []


@pytest.mark.usefixtures("worker")
async def test_aws_secrets_manager_and_ssm_references(kk: Katkit, repo: Path, monkeypatch) -> None:
    """aws-sm:ID#key and aws-ssm:/param, against moto: resolved by the worker, masked, and a missing one is a line."""
    from moto import mock_aws

    from katkit.aws import client, reset_clients

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-1",
                 "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    reset_clients()
    with mock_aws():
        client("secretsmanager", "eu-west-1").create_secret(
            Name="prod/registry", SecretString=json.dumps({"password": "registry-pass-1234", "user": "ci"}))
        client("ssm", "eu-west-1").put_parameter(Name="/prod/api-key", Value="api-key-5678-xyz", Type="SecureString")
        config = parse_config(f"""
tenants:
  - name: d-aws
    env: DEV
    secrets: {{REGISTRY_PASSWORD: "aws-sm:prod/registry#password", API_KEY: "aws-ssm:/prod/api-key"}}
  - name: d-aws-gone
    env: DEV
    secrets: {{NOPE: "aws-sm:prod/not-there"}}
links:
  - {{repo: taskrunner, url: {repo}, tenants: [d-aws, d-aws-gone]}}
""")
        ks = Katkit(kk.client, kk.settings, config)
        sha = commit_files(repo, {"ci.sh": 'echo "reg=$REGISTRY_PASSWORD api=$API_KEY len=${#API_KEY}"\n'})
        handle = await ks.start_run("d-aws", "taskrunner", sha=sha, by="bob")
        await ks.wait(handle.run_id)
        log = "".join(data.decode() for _, data in [x async for x in ks.follow_logs(handle.run_id, "BUILD")])
        assert "reg=*** api=*** len=16" in log, log
        gone = await ks.start_run("d-aws-gone", "taskrunner", sha=sha, by="bob")
        with pytest.raises(RunFailed, match="secret NOPE of tenant d-aws-gone: aws-sm:prod/not-there: "
                                            "ResourceNotFoundException"):
            await ks.wait(gone.run_id)
    reset_clients()


class _Log:
    """A builder's log as the pump reads it (by offset), and a log store as it writes (at offsets)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.store = data, bytearray()

    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        return self.data[offset:offset + limit]

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        del self.store[offset:]
        self.store += data


def test_the_pump_stores_the_whole_log_masked_however_it_grows(monkeypatch) -> None:
    """Read while ci.sh writes (a value split across reads), then many chunks left unread when the builder ends:
    the store holds all of it, every value masked (a builder that ended with more than a chunk unread once lost
    the rest of its log)."""
    import activities.shards as shards

    monkeypatch.setattr(shards, "LOG_CHUNK", 256)
    line = b"x" * 50 + NPM.encode() + b"\n"
    data = line * 400  # 100 chunks
    log = _Log(data)
    pump = shards.ShardActivities.__new__(shards.ShardActivities)
    pump.log_store = log  # type: ignore[assignment]
    masker, pos = Masker([NPM]), (0, 0)
    for end in range(7, 3000, 37):  # a slow writer: the pump sees the log grow a little at a time
        log.data = data[:end]
        pos = pump._pump(log, "b", "k", pos, 1, masker, final=False)  # type: ignore[arg-type]
    log.data = data
    pos = pump._pump(log, "b", "k", pos, 1, masker, final=True)  # type: ignore[arg-type]
    assert bytes(log.store) == data.replace(NPM.encode(), MASK) and pos == (len(data), len(log.store))
