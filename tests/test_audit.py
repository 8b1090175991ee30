"""The deployment record for auditors: ``katkit history --since --json --csv`` and ``katkit audit RUN``."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.models import RunStatus
from katkit.sample import commit_files
from starter.api import Katkit
from starter.audit import audit_trail
from starter.ledger import parse_since
from tests.conftest import status_is, wait_for
from tests.test_hostile_input import cli, no_run_started, one_error_line

pytestmark = pytest.mark.usefixtures("worker")


async def _approved_prod_run(kk: Katkit, sha: str) -> str:
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    await kk.client.get_workflow_handle(handle.run_id).signal("approve", {"by": "mallory"})  # refused: not an approver
    await kk.approve(handle.run_id, "alice", "ship it")
    await kk.wait(handle.run_id)
    return handle.run_id


async def test_history_for_auditors_since_json_csv(kk: Katkit, repo: Path, sha: str, capsys, monkeypatch,
                                                   settings: Settings, config_file: Path) -> None:
    run_id = await _approved_prod_run(kk, sha)
    sha2 = commit_files(repo, {"CHANGES.md": "v2\n"})
    run2 = await _approved_prod_run(kk, sha2)
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "p-taskrunner",
                               "--json", "--since", "1h")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["run_id"], r["kind"], r["running_now"]) for r in rows] == [(run_id, "deploy", False), (run2, "deploy", True)]
    first = rows[0]
    assert (first["sha"], first["image"], first["previous_image"], first["attempt"]) == (sha, f"taskrunner:{sha}", None, 1)
    assert first["started_by"] == "bob" and first["approved_by"] == ["alice"]
    assert [(a["by"], a["comment"]) for a in first["approvals"]] == [("alice", "ship it")]
    assert first["ended_at"] >= first["at"] and first["freeze_overrides"] == []
    assert rows[1]["previous_image"] == f"taskrunner:{sha}"

    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "p-taskrunner", "--csv")
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["run_id"], r["image"], r["running_now"]) for r in table] == [
        (run_id, f"taskrunner:{sha}", "False"), (run2, f"taskrunner:{sha2}", "True")]
    assert table[0]["approvals"].startswith("alice at ") and table[0]["approvals"].endswith(": ship it")
    assert table[1]["previous_image"] == f"taskrunner:{sha}" and table[0]["previous_image"] == ""

    future = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "p-taskrunner",
                               "--since", future)
    assert code == 0 and out.startswith("no deployments of any service in p-taskrunner since"), (out, err)
    for bad, needle in ((("--since", "yesterday"), "--since 'yesterday' is neither a date/time"),
                        (("--json", "--csv"), "--json and --csv: choose one")):
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "p-taskrunner", *bad)
        assert code == 2 and out == ""
        one_error_line(err, needle)


def test_since_reads_dates_times_and_durations() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("1h30m", now) == now - timedelta(hours=1, minutes=30)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_since("2026-11-01T09:00Z", now) == datetime(2026, 11, 1, 9, tzinfo=timezone.utc)
    assert parse_since("2026-11-01T09:00+02:00", now) == datetime(2026, 11, 1, 7, tzinfo=timezone.utc)


async def test_audit_tells_the_trail_and_checks_it(kk: Katkit, sha: str, capsys, monkeypatch, settings: Settings,
                                                  config_file: Path) -> None:
    run_id = await _approved_prod_run(kk, sha)
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "audit", run_id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"audit of {run_id}: succeeded"
    text = "\n".join(lines)
    assert "started   by bob: taskrunner@" in text
    assert "decision  approve by mallory (signal): refused: mallory is not an approver" in text
    assert "decision  approve by alice (katkit CLI/API): accepted — ship it" in text
    assert f"deployed  deploy: taskrunner:{sha} runs (1 replica(s)), previously nothing" in text
    assert "ended     completed" in text
    assert lines[-1] == "checked against the run's own status: the trail agrees"
    whats = [line.split()[2] for line in lines[1:-1]]
    assert whats.index("started") < whats.index("checkout") < whats.index("decision") < whats.index("deployed") < \
        whats.index("ended")

    # a status that says something else than history: said, exit 1 (the CLI's check, fed a status that lies)
    history = await kk.client.get_workflow_handle(run_id).fetch_history()
    st = await kk.status(run_id)
    lying = RunStatus.model_validate({**st.model_dump(), "deployed": None})
    lying.approval.decisions = lying.approval.decisions[1:]
    trail = audit_trail(history, lying)
    assert not trail.consistent and len(trail.disagreements) == 2
    assert any("deployed taskrunner:" in d and "status: deployed nothing" in d for d in trail.disagreements)
    monkeypatch.setattr(Katkit, "status", lambda self, run: _returns(lying))
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "audit", run_id)
    assert code == 1 and "katkit: error: the trail disagrees with the run's status: history has the decisions" in err

    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "audit", "run-nope")
    assert code == 2 and out == ""
    one_error_line(err, "run-nope")


async def _returns(value: object) -> object:
    return value


async def test_audit_of_a_failed_run(kk: Katkit, repo: Path, capsys, monkeypatch, settings: Settings,
                                     config_file: Path) -> None:
    bad = commit_files(repo, {"ci.sh": "echo broken; exit 3\n"})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=bad, by="bob")
    with pytest.raises(Exception):
        await kk.wait(handle.run_id)
    trail = await kk.audit(handle.run_id)
    assert trail.consistent and trail.status == "failed", trail.disagreements
    assert trail.entries[-1].what == "ended" and trail.entries[-1].text.startswith("failed: phase BUILD failed")
    assert any(e.what == "shard" and "exited 3" in e.text for e in trail.entries)
    assert await no_run_started(kk.client, settings.model_copy(update={"task_queue": "nothing-here"}))
