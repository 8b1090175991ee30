"""Freeze windows: ad hoc freezes kept in Temporal (katkit freeze/unfreeze/freezes), recurring windows of katkit.yaml,
a deploy that waits (state frozen) or fails (on_freeze: fail), and an approver breaking the glass for one run."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from katkit.config import KatkitConfig, Settings, parse_config
from katkit.errors import BadInput, RunFailed
from katkit.freeze import window_open_at
from katkit.config import FreezeWindow
from katkit.names import freezes_id
from katkit.platforms.local import LocalPlatform
from starter.api import Katkit
from starter.freezes import parse_until
from tests.conftest import status_is, wait_for
from tests.test_hostile_input import cli, one_error_line
from tests.test_replay import HISTORIES, assert_replays
from tests.test_run_page import page

pytestmark = pytest.mark.usefixtures("worker")

COLD = """
tenants:
  - name: d-cold
    env: DEV
    on_freeze: fail
    freezes: [{{start: "* * * * *", duration: 1h, reason: always cold}}]
  - name: d-warm
    env: DEV
    approval: {{required: false, approvers: [alice]}}
    freezes: [{{start: "* * * * *", timezone: Europe/Berlin, duration: 1h, reason: always cold}}]
  - name: p-cold
    env: PROD
    approval: {{required: true, approvers: [alice]}}
    freezes: [{{start: "* * * * *", duration: 1h}}]
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-cold, d-warm, p-cold]}}
"""


def test_windows_and_until() -> None:
    fri = FreezeWindow(start="0 18 * * 5", timezone="Europe/Berlin", duration="62h", reason="weekend")
    assert window_open_at(fri, datetime(2026, 11, 27, 16, 59, tzinfo=timezone.utc)) is None
    start, end = window_open_at(fri, datetime(2026, 11, 27, 17, 0, 30, tzinfo=timezone.utc))
    assert (start.astimezone(timezone.utc), end.astimezone(timezone.utc)) == (
        datetime(2026, 11, 27, 17, tzinfo=timezone.utc), datetime(2026, 11, 30, 7, tzinfo=timezone.utc))
    assert window_open_at(fri, datetime(2026, 11, 30, 7, 0, tzinfo=timezone.utc)) is None
    now = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    assert parse_until("2026-12-27T09:00Z", now) == datetime(2026, 12, 27, 9, tzinfo=timezone.utc)
    assert parse_until("2h", now) == now + timedelta(hours=2)
    for bad in ("2026-01-01", "soon", ""):
        with pytest.raises(BadInput, match="--until"):
            parse_until(bad, now)
    for bad, needle in (({"start": "every friday"}, "not a cron expression"), ({"timezone": "Mars/Base"}, "not a time zone")):
        with pytest.raises(Exception, match=needle):
            FreezeWindow(**{"start": "0 18 * * 5", "duration": "1h", **bad})


async def test_an_adhoc_freeze_holds_the_deploy_until_unfreeze(kk: Katkit, sha: str, capsys, monkeypatch,
                                                               settings: Settings, config_file: Path) -> None:
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "freeze", "--tenant", "d-taskrunner",
                               "--until", "2h", "--reason", "holidays", "--by", "carol")
    assert code == 0 and out.startswith("frozen: d-taskrunner until "), err
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "frozen"), timeout=60)
    st = await kk.status(handle.run_id)
    assert [(p.name, p.state) for p in st.phases] == [("BUILD", "succeeded"), ("UNIT_TEST", "succeeded"), ("DEPLOY", "frozen")]
    assert st.freeze.by == "carol" and st.freeze.reason == "holidays" and st.freeze.frozen_until is not None
    assert "frozen until" in st.phases[-1].message and st.deployed is None
    shown = await page(kk, handle.run_id)  # the run's page in the web UI
    assert "### ❄ frozen · DEPLOY" in shown and "**Frozen**: the deploy waits until" in shown and "(holidays), set by carol" in shown
    assert f"katkit approve {handle.run_id} --by <you> --override-freeze" in shown
    assert [r.run_id for r in await kk.list(tenant="d-taskrunner", status="frozen")] in ([handle.run_id], [])
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", handle.run_id)
    assert code == 0 and "frozen" in out, err
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "freezes", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [(f["tenant"], f["source"], f["by"], f["reason"]) for f in listed] == [("d-taskrunner", "adhoc", "carol", "holidays")]
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "unfreeze", "--tenant", "d-taskrunner",
                               "--by", "carol")
    assert code == 0 and out.startswith("unfrozen: d-taskrunner by carol (lifted 1"), err
    st = await kk.wait(handle.run_id)
    assert st.deployed is not None and st.freeze.waited_s > 0 and st.freeze.frozen_until is None
    assert st.phases[-1].state == "succeeded"
    trail = await kk.audit(handle.run_id)
    assert trail.consistent, trail.disagreements
    assert [e.text for e in trail.entries if e.what == "frozen"][:2] == [
        next(e.text for e in trail.entries if e.what == "frozen" and "by carol: holidays" in e.text),
        "a freeze was lifted (katkit unfreeze): look again"]
    assert await kk.freezes("d-taskrunner") == []
    # bad input: one line, exit 2, nothing frozen
    for args, needle in ((("--tenant", "d-taskrunner", "--until", "2020-01-01T00:00Z", "--reason", "x"), "has passed"),
                         (("--tenant", "nope", "--until", "2h", "--reason", "x"), "unknown tenant 'nope'"),
                         (("--tenant", "d-taskrunner", "--until", "whenever", "--reason", "x"), "--until 'whenever'")):
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "freeze", *args)
        assert code == 2 and out == "", (args, out)
        one_error_line(err, needle)
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "unfreeze", "--tenant", "d-taskrunner")
    assert code == 2
    one_error_line(err, "no ad hoc freeze in force")
    history = await kk.client.get_workflow_handle(handle.run_id).fetch_history()
    freezes = await kk.client.get_workflow_handle(freezes_id(settings.task_queue, "d-taskrunner")).fetch_history()
    await assert_replays([history, freezes])
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "freeze2_adhoc_unfrozen.json").write_text(history.to_json())
        (HISTORIES / "freeze2_tenant_freezes.json").write_text(freezes.to_json())


async def test_windows_fail_or_wait_and_an_approver_breaks_the_glass(client, settings: Settings, repo: Path, sha: str,
                                                                      home: Path, capsys, monkeypatch,
                                                                      tmp_path: Path) -> None:
    config_file = tmp_path / "cold.yaml"
    config_file.write_text(COLD.format(url=repo))
    kk = Katkit(client, settings, parse_config(config_file.read_text()))
    failing = await kk.start_run("d-cold", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match=r"not deployed: d-cold is frozen until .* \(window \* \* \* \* \* \(UTC\)\): "
                                        r"always cold \(on_freeze: fail\)"):
        await kk.wait(failing.run_id)
    assert LocalPlatform(home / "services").current(kk.config.tenant("d-cold"), "taskrunner") is None

    warm = await kk.start_run("d-warm", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, warm.run_id, "frozen"), timeout=60)
    with pytest.raises(BadInput, match="mallory is not an approver of tenant d-warm"):
        await kk.override_freeze(warm.run_id, "mallory")
    await kk.override_freeze(warm.run_id, "alice", "customer outage")
    st = await kk.wait(warm.run_id)
    assert st.deployed is not None and [(o.by, o.text) for o in st.freeze.overrides] == [("alice", "customer outage")]

    gated = await kk.start_run("p-cold", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, gated.run_id, "awaiting_approval"), timeout=60)
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "approve", gated.run_id, "--by", "mallory",
                               "--override-freeze")
    assert code == 2
    one_error_line(err, "override refused: mallory is not an approver")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "approve", gated.run_id, "--by", "alice",
                               "--override-freeze", "--comment", "hotfix for INC-7")
    assert code == 0 and out.startswith("freeze overridden by alice at "), err
    st = await kk.wait(gated.run_id)
    assert st.deployed is not None and st.approval.approved_by == ["alice"]
    record = (await kk.deployments("p-cold", "taskrunner"))[-1]
    assert [(o.by, o.comment) for o in record.freeze_overrides] == [("alice", "hotfix for INC-7")]
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "p-cold", "--csv")
    assert code == 0 and ": hotfix for INC-7" in out.splitlines()[1], err
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "freezes", "--tenant", "p-cold")
    assert code == 0 and "window * * * * * (UTC)" in out and "in force" in out, err
    for run_id in (gated.run_id, warm.run_id, failing.run_id):
        assert (await kk.audit(run_id)).consistent
    histories = {name: await client.get_workflow_handle(run_id).fetch_history()
                 for name, run_id in (("window_fail", failing.run_id), ("window_override", warm.run_id),
                                      ("approve_override", gated.run_id))}
    await assert_replays(list(histories.values()))
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        for name, history in histories.items():
            (HISTORIES / f"freeze2_{name}.json").write_text(history.to_json())
