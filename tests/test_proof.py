"""Approvals you can trust (issue 17): a decision proves who made it.

Real components: key pairs made by ``ssh-keygen``, signatures by ``katkit approve --key`` (``ssh-keygen -Y sign``),
forged signals sent with Temporal's own CLI against the test dev server, and the run's gate verifying in the
workflow. The gate's rules on age, key and context are also checked directly (pure, time passed in).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from katkit.config import KatkitConfig, Settings, parse_config
from katkit.errors import BadInput
from katkit.models import ApprovalState, DecisionInput, DecisionProof
from katkit.proof import decision_message, sign_with_ssh_keygen, signer_fingerprint
from katkit.sample import commit_files
from katkit.temporal import free_port, temporal_binary
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from tests.test_github import fake_gh, work  # noqa: F401 - fixtures: the local GitHub and its repository
from tests.test_hostile_input import cli, one_error_line
from tests.test_replay import HISTORIES, assert_replays
from tests.test_run_page import page
from workflows.gate import ApprovalGate

CONFIG = """
tenants:
  - name: p-sec
    env: PROD
    approval:
      required: true
      require_proof: true
      approvers:
        - {{name: alice, keys: ["{alice}"]}}
        - {{name: bob, keys: ["{bob}"]}}
  - name: p-open
    env: PROD
    approval:
      required: true
      approvers:
        - {{name: alice, keys: ["{alice}"]}}
        - carol
links:
  - {{repo: taskrunner, url: {url}, tenants: [p-sec, p-open]}}
"""


def keypair(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """A fresh ed25519 key pair made by ssh-keygen: (private key file, public key line, fingerprint)."""
    key = tmp_path / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", str(key)], check=True)
    pub = Path(f"{key}.pub").read_text().strip()
    fp = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True, check=True).stdout.split()[1]
    return key, pub, fp


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    return {name: keypair(tmp_path, name) for name in ("alice", "bob")}


@pytest.fixture
def proof_config_file(tmp_path: Path, repo: Path, sha: str, keys: dict[str, tuple[Path, str, str]]) -> Path:
    path = tmp_path / "katkit-proof.yaml"
    path.write_text(CONFIG.format(url=repo, alice=keys["alice"][1], bob=keys["bob"][1]))
    return path


@pytest.fixture
def proof_config(proof_config_file: Path) -> KatkitConfig:
    return parse_config(proof_config_file.read_text())


@pytest.fixture
def kp(client, settings: Settings, proof_config: KatkitConfig) -> Katkit:
    return Katkit(client, settings, proof_config)


async def _awaiting(kk: Katkit, tenant: str, sha: str, repo: str = "taskrunner") -> str:
    handle = await kk.start_run(tenant, repo, sha=sha, by="dave")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    return handle.run_id


async def _decisions(kk: Katkit, run_id: str, n: int) -> list:
    async def enough():
        st = await kk.status(run_id)
        return st.approval.decisions if len(st.approval.decisions) >= n else None
    return await wait_for(enough)


def _record(name: str, history) -> None:
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / f"proof1_{name}.json").write_text(history.to_json())


@pytest.mark.usefixtures("worker")
async def test_a_forged_signal_from_temporals_cli_is_refused_and_the_gate_stays_closed(
        kp: Katkit, settings: Settings, sha: str, keys) -> None:
    run_id = await _awaiting(kp, "p-sec", sha)
    proc = await asyncio.create_subprocess_exec(
        temporal_binary(), "workflow", "signal", "--address", settings.address, "--namespace", settings.namespace,
        "--workflow-id", run_id, "--name", "approve", "--input", '{"by": "alice", "comment": "trust me"}',
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    [forged] = await _decisions(kp, run_id, 1)
    assert not forged.accepted and forged.by == "alice" and forged.verification == "unverified"
    assert "requires a signed decision (require_proof)" in forged.refused_because
    await asyncio.sleep(0.5)
    st = await kp.status(run_id)
    assert st.status == "awaiting_approval" and st.approval.outcome == "" and st.approval.approved_by == []
    with pytest.raises(BadInput, match="requires a signed decision"):  # the CLI's update is refused at once
        await kp.approve(run_id, "alice", "trust me")
    with pytest.raises(BadInput, match=r"signed by key SHA256:\S+, which is not one of alice's"):  # bob's key for alice
        await kp.approve(run_id, "alice", key=str(keys["bob"][0]))
    text = await page(kp, run_id)
    assert "unverified" in text and f"Decisions must be signed (require_proof): `katkit approve {run_id} --by <you> " \
        "--key ~/.ssh/id_ed25519`" in text
    d = await kp.reject(run_id, "bob", "not like this", key=str(keys["bob"][0]))
    assert d.accepted and d.verified_by == f"ssh key {keys['bob'][2]}"
    with pytest.raises(Exception):
        await kp.wait(run_id)
    history = await kp.client.get_workflow_handle(run_id).fetch_history()
    await assert_replays([history])
    _record("forged_refused_signed_reject", history)


@pytest.mark.usefixtures("worker")
async def test_a_signature_for_run_a_replayed_on_run_b_is_refused(kp: Katkit, repo: Path, sha: str, keys) -> None:
    run_a = await _awaiting(kp, "p-sec", sha)
    run_b = await _awaiting(kp, "p-sec", commit_files(repo, {"CHANGES.md": "b\n"}))
    signed_for_a = await kp._signed(run_a, "approve", DecisionInput(by="alice", comment="ok"), "ok", str(keys["alice"][0]))
    await kp.client.get_workflow_handle(run_b).signal("approve", signed_for_a)
    [replayed] = await _decisions(kp, run_b, 1)
    assert not replayed.accepted and "does not match this decision" in replayed.refused_because
    assert (await kp.status(run_b)).status == "awaiting_approval"
    await kp.client.get_workflow_handle(run_a).signal("approve", signed_for_a)  # where it belongs it proves alice
    st = await kp.wait(run_a)
    assert st.approval.decisions[-1].verified_by == f"ssh key {keys['alice'][2]}" and st.deployed is not None
    await kp.cancel(run_b)


@pytest.mark.usefixtures("worker")
async def test_a_key_made_by_ssh_keygen_signs_through_the_real_cli_and_opens_the_gate(
        kp: Katkit, settings: Settings, proof_config_file: Path, sha: str, keys, capsys, monkeypatch) -> None:
    run_id = await _awaiting(kp, "p-sec", sha)
    code, out, err = await cli(capsys, monkeypatch, settings, proof_config_file, "approve", run_id, "--by", "alice",
                               "--comment", "ship it", "--key", str(keys["alice"][0]))
    assert code == 0, err
    assert f"approved by alice at " in out and f"(verified (ssh key {keys['alice'][2]}))" in out
    st = await kp.wait(run_id)
    [d] = st.approval.decisions
    assert d.accepted and d.text == "ship it" and d.verified_by == f"ssh key {keys['alice'][2]}"
    code, out, err = await cli(capsys, monkeypatch, settings, proof_config_file, "status", run_id)
    assert f"verified (ssh key {keys['alice'][2]})" in out
    assert f"verified (ssh key {keys['alice'][2]})" in await page(kp, run_id)
    code, out, err = await cli(capsys, monkeypatch, settings, proof_config_file, "history", "--tenant", "p-sec")
    assert code == 0 and f"alice (verified (ssh key {keys['alice'][2]}))" in out, out + err
    history = await kp.client.get_workflow_handle(run_id).fetch_history()
    await assert_replays([history])
    _record("signed_cli_approved", history)


@pytest.mark.usefixtures("worker")
async def test_without_require_proof_unsigned_decisions_work_and_say_unverified(kp: Katkit, sha: str, keys) -> None:
    run_id = await _awaiting(kp, "p-open", sha)
    d = await kp.approve(run_id, "carol", "fine")
    assert d.accepted and d.verified_by == "unverified" and d.verification == "unverified"
    st = await kp.wait(run_id)
    assert st.deployed is not None
    assert "(accepted, unverified)" in await page(kp, run_id)


@pytest.mark.usefixtures("worker")
async def test_a_key_file_that_is_not_a_key_is_one_line_exit_2(
        kp: Katkit, settings: Settings, proof_config_file: Path, sha: str, tmp_path: Path, capsys, monkeypatch) -> None:
    run_id = await _awaiting(kp, "p-sec", sha)
    bad = tmp_path / "not-a-key"
    bad.write_text("hello\n")
    code, out, err = await cli(capsys, monkeypatch, settings, proof_config_file, "approve", run_id, "--by", "alice",
                               "--key", str(bad))
    assert code == 2
    one_error_line(err, f"cannot sign with {bad}", "ssh-keygen -t ed25519")
    code, out, err = await cli(capsys, monkeypatch, settings, proof_config_file, "approve", run_id, "--by", "alice",
                               "--key", str(tmp_path / "missing"))
    assert code == 2
    one_error_line(err, "not found")
    assert (await kp.status(run_id)).approval.decisions == []
    await kp.cancel(run_id)


@pytest.mark.parametrize("entry, needle", [
    ('{name: alice, colour: red}', "approvers.0: unknown field 'colour'"),
    ('{name: alice, keys: ["ssh-rsa AAAAB3NzaC1yc2E"]}', "'ssh-rsa' keys are not supported"),
    ('{name: alice, keys: ["not a key at all"]}', "not an SSH public key"),
])
def test_a_bad_approver_entry_is_one_line_exit_2(entry: str, needle: str, capsys, monkeypatch, settings: Settings,
                                                 tmp_path: Path, repo: Path) -> None:
    from tests.test_cli import run_cli

    path = tmp_path / "bad.yaml"
    path.write_text(f"tenants:\n  - name: p-x\n    env: PROD\n    approval: {{required: true, approvers: [{entry}]}}\n"
                    f"links:\n  - {{repo: taskrunner, url: {repo}, tenants: [p-x]}}\n")
    code, out, err = run_cli(capsys, monkeypatch, settings, path, "run", "--tenant", "p-x", "--repo", "taskrunner",
                             "--branch", "main")
    assert code == 2
    one_error_line(err, needle)


# -- the gate's rules, directly (pure: time passed in) ---------------------------------------------------------
def _gate(config: KatkitConfig, tenant: str = "p-sec", run_id: str = "run-a", sha: str = "a" * 40,
          execution: str = "attempt-1") -> ApprovalGate:
    return ApprovalGate(config.tenant(tenant), "dave", ApprovalState(required=True, awaiting=True), run_id=run_id, sha=sha,
                        execution=execution)


def _signed(key: Path, *, run_id: str = "run-a", sha: str = "a" * 40, tenant: str = "p-sec", kind: str = "approve",
            by: str = "alice", text: str = "", at: datetime, execution: str = "attempt-1") -> DecisionInput:
    sig = sign_with_ssh_keygen(str(key), decision_message(run_id=run_id, execution=execution, sha=sha, tenant=tenant,
                                                          kind=kind, by=by, text=text, signed_at=at))
    return DecisionInput(by=by, comment=text, proof=DecisionProof(signature=sig, signed_at=at, key=signer_fingerprint(sig)))


def test_the_gate_refuses_old_future_foreign_and_mismatched_signatures(proof_config: KatkitConfig, keys) -> None:
    now = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    alice, alice_fp = keys["alice"][0], keys["alice"][2]
    assert _gate(proof_config).verification("approve", _signed(alice, at=now - timedelta(minutes=9)), now) == \
        (f"ssh key {alice_fp}", "")
    cases = {
        "too old": (_signed(alice, at=now - timedelta(minutes=11)), "too old"),
        "in the future": (_signed(alice, at=now + timedelta(minutes=5)), "dated in the future"),
        "another tenant": (_signed(alice, tenant="p-open", at=now), "does not match this decision"),
        "another sha": (_signed(alice, sha="b" * 40, at=now), "does not match this decision"),
        "another kind": (_signed(alice, kind="reject", at=now), "does not match this decision"),
        "another attempt of the run": (_signed(alice, execution="attempt-0", at=now), "does not match this decision"),
        "bob's key as alice": (_signed(keys["bob"][0], at=now), "not one of alice's"),
        "unsigned": (DecisionInput(by="alice"), "requires a signed decision"),
    }
    for case, (inp, needle) in cases.items():
        verified, why = _gate(proof_config).verification("approve", inp, now)
        assert verified == "unverified" and needle in why, case
    decision = _gate(proof_config).decide("approve", _signed(alice, at=now - timedelta(minutes=11)), now, "awaiting_approval")
    assert not decision.accepted and "too old" in decision.refused_because  # recorded, with why
    # no require_proof: unsigned is accepted as unverified, a bad signature is still refused
    assert _gate(proof_config, "p-open").verification("approve", DecisionInput(by="carol"), now) == ("unverified", "")
    assert "declares no keys for carol" in _gate(proof_config, "p-open").verification(
        "approve", _signed(alice, by="carol", tenant="p-open", at=now), now)[1]


# -- GitHub as the identity provider: /katkit comments through the real `katkit webhook` -------------------------
def _github_config(fake_gh, webhook_pub: str) -> str:
    from tests.test_github import FULL

    return f"""
tenants:
  - name: p-app
    env: PROD
    approval:
      required: true
      require_proof: true
      approvers: [{{name: bob, github: bob-gh}}]
      webhook_key: "{webhook_pub}"
github: {{api_url: "{fake_gh.api_url}"}}
links:
  - {{repo: app, url: "{fake_gh.git_url(FULL)}", github: {FULL}, branch: main, tenants: [p-app]}}
"""


async def test_a_github_comment_from_an_approver_opens_the_gate_and_one_from_a_stranger_does_not(
        client, settings: Settings, tmp_path: Path, fake_gh, work: Path) -> None:
    pass

    from tests.conftest import cli_env, in_process_worker
    from tests.test_github import FULL, KATKIT, SECRET, TOKEN, post, signed

    hook_key, hook_pub, hook_fp = keypair(tmp_path, "webhook")
    gh_settings = settings.model_copy(update={"github_token": TOKEN})
    config_file = tmp_path / "gh-proof.yaml"
    config_file.write_text(_github_config(fake_gh, hook_pub))
    kk = Katkit(client, gh_settings, parse_config(config_file.read_text()))
    sha = fake_gh.repos[FULL].branches["main"]
    fake_gh.add_pull(FULL, 7, sha)
    port = free_port()
    env = {**cli_env(gh_settings, config_file), "KATKIT_GITHUB_TOKEN": TOKEN, "KATKIT_GITHUB_WEBHOOK_SECRET": SECRET,
           "KATKIT_WEBHOOK_SIGNING_KEY": str(hook_key)}
    async with in_process_worker(client, gh_settings):
        run_id = await _awaiting(kk, "p-app", sha, repo="app")
        proc = subprocess.Popen([*KATKIT, "webhook", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert "listening on http://127.0.0.1:" in await asyncio.to_thread(proc.stdout.readline)
            url = f"http://127.0.0.1:{port}/"

            async def comment(event: str, login: str, body: str, **where) -> tuple[int, dict]:
                payload = json.dumps({"action": "created", "repository": {"full_name": FULL},
                                      "comment": {"body": body, "user": {"login": login}, **where.get("comment", {})},
                                      **{k: v for k, v in where.items() if k != "comment"}}).encode()
                return await asyncio.to_thread(post, url, payload, {
                    "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signed(payload)})

            code, body = await comment("commit_comment", "mallory", "/katkit approve p-app", comment={"commit_id": sha})
            assert code == 200 and body["decided"] is None
            assert "mallory is not an approver of p-app" in body["answer"]
            assert fake_gh.repos[FULL].comments[-1]["on"] == f"commit {sha}"
            assert fake_gh.repos[FULL].comments[-1]["body"].startswith("@mallory katkit: nothing changed:")
            st = await kp_status(kk, run_id)
            assert st.status == "awaiting_approval" and st.approval.decisions == []

            code, body = await comment("issue_comment", "bob-gh", "LGTM\n/katkit approve p-app ship it",
                                       issue={"number": 7, "pull_request": {"url": "x"}})
            assert code == 202 and body["decided"] == run_id, body
            reply = fake_gh.repos[FULL].comments[-1]
            assert reply["on"] == "pull 7" and "approved" in reply["body"] and "verified (github bob-gh)" in reply["body"]
            st = await kk.wait(run_id)
            [d] = st.approval.decisions
            assert d.by == "bob" and d.text == "ship it" and d.verified_by == "github bob-gh" and st.deployed is not None
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
        history = await kk.client.get_workflow_handle(run_id).fetch_history()
        await assert_replays([history])
        _record("github_comment_approved", history)


async def kp_status(kk: Katkit, run_id: str):
    return await kk.status(run_id)


def test_a_signal_that_claims_a_github_login_proves_nothing(tmp_path: Path, repo: Path, sha: str) -> None:
    """Without the webhook's key, a proof naming a GitHub login is refused (signed by someone else's key)."""
    hook_key, hook_pub, _ = keypair(tmp_path, "webhook")
    other_key, _, _ = keypair(tmp_path, "other")
    config = parse_config(f"""
tenants:
  - name: p-app
    env: PROD
    approval: {{required: true, require_proof: true, approvers: [{{name: bob, github: bob-gh}}], webhook_key: "{hook_pub}"}}
""")
    now = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    gate = ApprovalGate(config.tenant("p-app"), "dave", ApprovalState(required=True, awaiting=True), run_id="r", sha="s")

    def claim(key: Path, login: str = "bob-gh") -> DecisionInput:
        sig = sign_with_ssh_keygen(str(key), decision_message(run_id="r", execution="", sha="s", tenant="p-app",
                                                              kind="approve",
                                                              by="bob", text="", signed_at=now, github=login))
        return DecisionInput(by="bob", proof=DecisionProof(signature=sig, signed_at=now, github=login))

    assert gate.verification("approve", claim(hook_key), now) == ("github bob-gh", "")
    assert "which is not one of bob's" in gate.verification("approve", claim(other_key), now)[1]
    assert "GitHub user mallory is not bob" in gate.verification("approve", claim(hook_key, "mallory"), now)[1]


def test_a_key_held_by_ssh_agent_signs_through_its_pub_file(tmp_path: Path, proof_config: KatkitConfig, keys,
                                                             monkeypatch) -> None:
    """As git does: the private key stays in ssh-agent; --key names the .pub."""
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", agent))
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        alice, _, alice_fp = keys["alice"]
        subprocess.run(["ssh-add", "-q", str(alice)], check=True, capture_output=True)
        pub = tmp_path / "alice-in-agent.pub"
        pub.write_text(Path(f"{alice}.pub").read_text())
        alice.unlink()  # only the agent has the private key now
        now = datetime.now(timezone.utc)
        assert _gate(proof_config).verification("approve", _signed(pub, at=now), now) == (f"ssh key {alice_fp}", "")
    finally:
        subprocess.run(["kill", env["SSH_AGENT_PID"]], check=False)
