"""The CLI never leaves you guessing (issue 13, the terminal part): a failed `--wait` ends with the failing shard's
log tail, one 1-based shard numbering everywhere (`shard 2/2`, `UNIT_TEST#2`, `#2` in the status table,
`logs --shard 2`), who must approve and how, promotion ids for approve/reject/status, ISO times and full shas in
JSON, a free lock that says free, shell completion, a live "took" column and the exit line of each followed shard.

Every case runs the real CLI (a process of its own where it waits, in-process otherwise) against the real dev
server and a real in-process worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.errors import UnknownName
from katkit.names import commit_run_id
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import cli_env, status_is, wait_for
from tests.test_cli import run_cli

pytestmark = pytest.mark.timeout(300)

KATKIT = [sys.executable, "-c", "from starter.cli import main; main()"]
ROOT = Path(__file__).resolve().parent.parent
ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")

FAILING_CI = """#!/usr/bin/env bash
echo "== $KATKIT_PHASE shard $KATKIT_SHARD_INDEX of $KATKIT_SHARD_COUNT"
if [ "$KATKIT_PHASE" = UNIT_TEST ] && [ "$KATKIT_SHARD_INDEX" = 1 ]; then
  sleep 3
  for i in $(seq 1 30); do echo "failing line $i"; done
  exit 3
fi
echo "fine"
"""

GATED = """
tenants:
  - {{name: d-taskrunner, env: DEV, platform: local, builder: local, approval: {{required: false}}}}
  - name: p-taskrunner
    env: PROD
    platform: local
    builder: local
    approval: {{required: true, approvers: [alice, bob, carol], min_approvals: {quorum}}}
links:
  - {{repo: taskrunner, url: {url}, branch: main, tenants: [d-taskrunner, p-taskrunner]}}
"""


async def cli(capsys, monkeypatch, settings: Settings, config_file: Path, *args: str) -> tuple[int, str, str]:
    """The real CLI in-process, on a thread of its own (it runs its own event loop; the worker runs in this one)."""
    return await asyncio.to_thread(run_cli, capsys, monkeypatch, settings, config_file, *args)


class KatkitProcess:
    """A real `katkit` process whose output is read line by line as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([*KATKIT, *args], env={**env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=lambda s=s, to=to: to.extend(iter(s.readline, "")), daemon=True)
                         for s, to in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    async def saw(self, needle: str, timeout: float = 90) -> None:
        try:
            await wait_for(lambda: any(needle in line for line in self.out), timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{needle!r} not in the output: {''.join(self.out)}{''.join(self.err)}") from None

    async def result(self, timeout: float = 120) -> tuple[int, str, str]:
        code = await asyncio.to_thread(self.proc.wait, timeout)
        for reader in self._readers:
            await asyncio.to_thread(reader.join, 10)
        return code, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_katkit(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = subprocess.run([*KATKIT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def gated_config(tmp_path: Path, repo: Path, quorum: int = 1) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(GATED.format(url=repo, quorum=quorum))
    return path


async def run_exists(kk: Katkit, run_id: str) -> bool:
    try:
        await kk.status(run_id)
        return True
    except UnknownName:
        return False


async def phase_is(kk: Katkit, run_id: str, phase: str, state: str) -> bool:
    try:
        return any(p.name == phase and p.state == state for p in (await kk.status(run_id)).phases)
    except UnknownName:
        return False


def one_error_line(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("katkit: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


# -- a failing shard: the tail, --shard N, one numbering, a live "took", the exit line of each followed shard -----------
@pytest.mark.usefixtures("worker")
async def test_a_failing_shard_is_told_with_one_numbering_everywhere(capsys, monkeypatch, kk: Katkit, settings: Settings,
                                                                    config_file: Path, repo: Path, sha: str) -> None:
    failing = commit_files(repo, {"ci.sh": FAILING_CI}, "shard 2 fails")
    run_id = commit_run_id("d-taskrunner", "taskrunner", failing)
    env = cli_env(settings, config_file)
    waiter = KatkitProcess(env, "run", "--tenant", "d-taskrunner", "--repo", "taskrunner", "--sha", failing, "--wait")
    try:
        await wait_for(lambda: run_exists(kk, run_id), timeout=60)
        follower = KatkitProcess(env, "logs", run_id, "--follow")
        try:
            # the status table while UNIT_TEST runs: its "took" counts
            await wait_for(lambda: phase_is(kk, run_id, "UNIT_TEST", "running"), timeout=60)
            code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id)
            assert code == 0, err
            row = next(line for line in out.splitlines() if "UNIT_TEST" in line)
            assert re.search(r"\d+\.\d s…", row), out

            code, out, err = await waiter.result()
            follow_code, followed, follow_err = await follower.result()
        finally:
            follower.kill()
    finally:
        waiter.kill()

    # run --wait: the error, then the failing shard's last 20 lines, labelled as `katkit logs` labels them
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith(f"katkit: error: run {run_id} failed: ") and "shard 2/2" in err, err
    waited = out.splitlines()
    assert f"katkit logs {run_id} --phase UNIT_TEST --shard 2" in waited[-21], out
    assert "UNIT_TEST#2| failing line 30" in waited[-20:] and "failing line 10\n" not in out

    # logs --follow: every shard ends with its exit line, after its last log line; no 0-based label anywhere
    assert follow_code == 0 and follow_err == "", follow_err
    followed_lines = followed.splitlines()
    ending = next(i for i, line in enumerate(followed_lines) if line.startswith("[katkit] UNIT_TEST#2: "))
    assert re.fullmatch(r"\[katkit\] UNIT_TEST#2: ci\.sh exited 3 in \d+\.\d s", followed_lines[ending]), followed
    assert ending > followed_lines.index("UNIT_TEST#2| failing line 30")
    assert re.search(r"^\[katkit\] UNIT_TEST#1: ci\.sh exited 0 in \d+\.\d s$", followed, re.M), followed
    assert re.search(r"^\[katkit\] BUILD: ci\.sh exited 0 in \d+\.\d s$", followed, re.M), followed
    assert "UNIT_TEST#0" not in followed and "UNIT_TEST#1| == UNIT_TEST shard 0 of 2" in followed

    # the status table numbers shards as the rest does
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id)
    assert code == 1 and "#1: succeeded (exit 0)" in out and "#2: failed (exit 3)" in out and "#0" not in out, out

    # logs --shard N (1-based), with or without --phase
    for args in (("--shard", "2"), ("--shard", "2", "--phase", "UNIT_TEST")):
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, *args)
        assert code == 0 and err == "", err
        assert "UNIT_TEST#2| == UNIT_TEST shard 1 of 2\n" in out
        assert all(line.startswith("UNIT_TEST#2| ") for line in out.splitlines()) and "failing line 30" in out
        assert waited[-20:] == out.splitlines()[-20:]  # the tail is the log's own last 20 lines
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--shard", "1", "--phase", "BUILD")
    assert code == 0 and "\n== BUILD shard 0 of 1\nfine\n" in out and "BUILD|" not in out, out
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--shard", "3")
    one_error_line(code, out, err, f"run {run_id} has no shard 3", "UNIT_TEST has shards 1-2")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--shard", "2", "--phase", "BUILD")
    one_error_line(code, out, err, "has no shard 2", "BUILD has shard 1")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--shard", "0")
    one_error_line(code, out, err, "--shard")

    # JSON: times in ISO 8601 with their zone, full shas
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id, "--json")
    st = json.loads(out)
    assert st["sha"] == failing and ISO_WITH_ZONE.match(st["started_at"]) and ISO_WITH_ZONE.match(st["ended_at"]), st
    assert all(ISO_WITH_ZONE.match(p["started_at"]) for p in st["phases"] if p["started_at"]), st
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "list", "--json")
    row = next(r for r in json.loads(out) if r["run_id"] == run_id)
    assert row["sha"] == failing and ISO_WITH_ZONE.match(row["started"]), row
    assert datetime.fromisoformat(row["started"]).utcoffset() is not None
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "list")
    assert failing[:12] in out and failing not in out  # the table keeps short shas


# -- the gate: who must decide and how, at the moment it opens; who approved -----------------------------------------
@pytest.mark.usefixtures("worker")
async def test_wait_says_how_to_approve_when_the_gate_opens_and_who_approved(kk: Katkit, settings: Settings,
                                                                            repo: Path, sha: str, tmp_path: Path) -> None:
    config = gated_config(tmp_path, repo, quorum=2)
    run_id = commit_run_id("p-taskrunner", "taskrunner", sha)
    waiter = KatkitProcess(cli_env(settings, config), "run", "--tenant", "p-taskrunner", "--repo", "taskrunner",
                            "--sha", sha, "--by", "dave", "--wait")
    try:
        await waiter.saw(f"katkit approve {run_id} --by <you>")
        assert await status_is(kk, run_id, "awaiting_approval")
        gate = next(line for line in waiter.out if "katkit approve" in line)
        assert "alice, bob, carol" in gate and "2 approvals" in gate, gate
        assert f"katkit reject {run_id} --by <you>" in "".join(waiter.out)
        await kk.client.get_workflow_handle(run_id).signal("approve", {"by": "mallory"})  # as from the web UI
        await waiter.saw("approve by mallory refused: mallory is not an approver")
        await kk.approve(run_id, "alice", "lgtm")
        await waiter.saw("approve by alice accepted (1 of 2)")
        await kk.approve(run_id, "bob")
        code, out, err = await waiter.result()
    finally:
        waiter.kill()
    assert code == 0, (out, err)
    assert re.search(r"^\s+DEPLOY\s+approved by alice, bob$", out, re.M), out
    assert out.index("approved by alice, bob") < out.index("succeeded: taskrunner:")


# -- promotions: approve, reject and status take a promotion id; the current step shows its run's state --------------
@pytest.mark.usefixtures("worker")
async def test_a_promotion_id_is_enough_to_decide_and_to_see_the_gate(capsys, monkeypatch, kk: Katkit, settings: Settings,
                                                                      repo: Path, sha: str, tmp_path: Path) -> None:
    config = gated_config(tmp_path, repo)
    promotion = f"promote-taskrunner-{sha[:12]}"
    p_run = commit_run_id("p-taskrunner", "taskrunner", sha)
    waiter = KatkitProcess(cli_env(settings, config), "promote", "--repo", "taskrunner", "--sha", sha,
                            "--through", "d-taskrunner,p-taskrunner", "--by", "dave", "--wait")
    try:
        await waiter.saw("awaiting_approval")
        assert await status_is(kk, p_run, "awaiting_approval")
        await waiter.saw(f"katkit approve {promotion} --by <you>")

        code, out, err = await cli(capsys, monkeypatch, settings, config, "status", promotion)
        assert code == 0, err
        assert re.search(rf"^\s+p-taskrunner\s+awaiting_approval\s+{p_run}", out, re.M), out
        code, out, err = await cli(capsys, monkeypatch, settings, config, "status", promotion, "--json")
        st = json.loads(out)
        assert [s["status"] for s in st["steps"]] == ["succeeded", "awaiting_approval"] and st["sha"] == sha, st

        code, out, err = await cli(capsys, monkeypatch, settings, config, "reject", promotion, "--by", "mallory")
        one_error_line(code, out, err, "reject refused", "mallory")
        code, out, err = await cli(capsys, monkeypatch, settings, config, "approve", promotion, "--by", "alice")
        assert code == 0, err
        assert out.startswith(f"approved {p_run} (step p-taskrunner of {promotion}) by alice at "), out
        code, out, err = await waiter.result()
    finally:
        waiter.kill()
    assert code == 0 and "promoted" in out, (out, err)
    assert re.search(r"^\s+p-taskrunner\s+succeeded\s+", out, re.M), out

    code, out, err = await cli(capsys, monkeypatch, settings, config, "approve", promotion, "--by", "bob")
    one_error_line(code, out, err, f"promotion {promotion} has no run awaiting a decision")
    code, out, err = await cli(capsys, monkeypatch, settings, config, "reject", promotion, "--by", "bob")
    one_error_line(code, out, err, f"promotion {promotion} has no run awaiting a decision")

    # both deploy locks are free now, and say so
    code, out, err = await cli(capsys, monkeypatch, settings, config, "locks")
    assert code == 0, err
    assert "d-taskrunner/taskrunner [queue]: free\n" in out and "p-taskrunner/taskrunner [queue]: free\n" in out, out
    assert "held by" not in out


@pytest.mark.usefixtures("worker")
async def test_promote_wait_ends_with_the_failing_steps_log_tail(settings: Settings, repo: Path, sha: str,
                                                                tmp_path: Path) -> None:
    failing = commit_files(repo, {"ci.sh": "#!/usr/bin/env bash\nfor i in $(seq 1 25); do echo \"build line $i\"; done\n"
                                           "exit 4\n"}, "build fails")
    config = gated_config(tmp_path, repo)
    waiter = KatkitProcess(cli_env(settings, config), "promote", "--repo", "taskrunner", "--sha", failing,
                            "--through", "d-taskrunner,p-taskrunner", "--wait")
    try:
        code, out, err = await waiter.result()
    finally:
        waiter.kill()
    assert code == 1 and "at d-taskrunner" in err and err.count("\n") == 1, (out, err)
    d_run = commit_run_id("d-taskrunner", "taskrunner", failing)
    waited = out.splitlines()
    assert f"katkit logs {d_run} --phase BUILD" in waited[-21] and "BUILD| build line 25" in waited[-20:], out
    log_code, log, _ = await asyncio.to_thread(run_katkit, cli_env(settings, config), "logs", d_run)
    assert log_code == 0 and waited[-20:] == log.splitlines()[-20:] and "build line 5\n" not in out, log


# -- shell completion --------------------------------------------------------------------------------------------
def complete(env: dict[str, str], words: str, timeout: float = 30) -> tuple[list[str], str, float]:
    """What bash completion would offer for the last word of ``words`` (click's own protocol), its stderr and time."""
    began = time.monotonic()
    proc = subprocess.run(KATKIT, env={**env, "_KATKIT_COMPLETE": "bash_complete", "COMP_WORDS": words,
                                       "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line], proc.stderr, time.monotonic() - began


async def test_shell_completion_offers_tenants_repos_and_recent_runs(kk: Katkit, settings: Settings, config_file: Path,
                                                                     sha: str, tmp_path: Path) -> None:
    env = cli_env(settings, config_file)
    offered, err, _ = await asyncio.to_thread(complete, env, "katkit run --tenant d-")
    assert offered == ["d-taskrunner"] and err == ""
    offered, err, _ = await asyncio.to_thread(complete, env, "katkit list --tenant ")
    assert offered == ["d-taskrunner", "p-taskrunner"] and err == ""
    offered, err, _ = await asyncio.to_thread(complete, env, "katkit promote --through d-taskrunner,p")
    assert offered == ["d-taskrunner,p-taskrunner"] and err == ""
    offered, err, _ = await asyncio.to_thread(complete, env, "katkit run --tenant d-taskrunner --repo t")
    assert offered == ["taskrunner"] and err == ""
    offered, _, _ = await asyncio.to_thread(complete, env, "katkit list --status await")
    assert offered == ["awaiting_approval"]

    # katkit.yaml broken: nothing offered, nothing said
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: [\n")
    offered, err, _ = await asyncio.to_thread(complete, {**env, "KATKIT_CONFIG": str(bad)}, "katkit run --tenant ")
    assert offered == [] and err == ""

    # run ids: recent runs and promotions from Temporal (no worker needed)
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    try:
        await wait_for(lambda: _listed(kk, handle.run_id))
        offered, err, _ = await asyncio.to_thread(complete, env, "katkit status run-d-")
        assert handle.run_id in offered and all(o.startswith("run-d-") for o in offered) and err == "", (offered, err)
        offered, _, _ = await asyncio.to_thread(complete, env, "katkit logs ")
        assert handle.run_id in offered
    finally:
        await kk.client.get_workflow_handle(handle.run_id).terminate("test over")

    # a Temporal that never answers (it accepts connections and says nothing): nothing offered, within about a second
    # (unbounded, the connect alone would wait longer than 5 s)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        held: list[socket.socket] = []
        threading.Thread(target=_hold_connections, args=(silent, held), daemon=True).start()
        _, _, baseline = await asyncio.to_thread(complete, env, "katkit run --tenant ")
        offered, err, took = await asyncio.to_thread(
            complete, {**env, "KATKIT_ADDRESS": f"127.0.0.1:{silent.getsockname()[1]}"}, "katkit status run-")
        for conn in held:
            conn.close()
    assert held and offered == [] and err == ""
    assert took < baseline + 2.0, (took, baseline)


def _hold_connections(server: socket.socket, held: list[socket.socket]) -> None:
    try:
        while True:
            held.append(server.accept()[0])
    except OSError:  # the server socket closed: the test is over
        pass


async def _listed(kk: Katkit, run_id: str) -> bool:
    return [wf.id async for wf in kk.client.list_workflows(f'WorkflowId = "{run_id}"')] == [run_id]


def test_completion_scripts_for_bash_zsh_and_fish() -> None:
    for shell, needle in (("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files")):
        proc = subprocess.run(KATKIT, env={**os.environ, "_KATKIT_COMPLETE": f"{shell}_source"}, capture_output=True,
                              text=True, timeout=30, cwd=ROOT)
        assert proc.returncode == 0 and needle in proc.stdout and "_KATKIT_COMPLETE" in proc.stdout, proc.stdout
