"""``katkit retry RUN [--from PHASE]``: numbered attempts of one run that reuse the phases that succeeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.errors import RunFailed
from katkit.sample import SAMPLE_CI_SH, commit_files
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from tests.test_hostile_input import cli, one_error_line
from tests.test_replay import HISTORIES, assert_replays

pytestmark = pytest.mark.usefixtures("worker")


async def test_retry_reuses_what_succeeded_and_numbers_attempts(kk: Katkit, repo: Path, sha: str, tmp_path: Path,
                                                                capsys, monkeypatch, settings: Settings,
                                                                config_file: Path) -> None:
    marker = tmp_path / "tests-may-pass"  # outside the repository: the same sha fails, then passes
    flaky = SAMPLE_CI_SH.replace('  UNIT_TEST)\n', f'  UNIT_TEST)\n    test -f {marker} || {{ echo "flaky: no {marker.name}"; exit 3; }}\n')
    flaky_sha = commit_files(repo, {"ci.sh": flaky})
    first = await kk.start_run("d-taskrunner", "taskrunner", sha=flaky_sha, by="bob")
    with pytest.raises(RunFailed, match="phase UNIT_TEST failed"):
        await kk.wait(first.run_id)
    run_id = first.run_id

    # refused, one line, exit 2, nothing started: --from after the failed phase, an unknown phase, an open run
    for args, needle in ((("--from", "DEPLOY"), "--from DEPLOY comes after the phase that did not succeed (UNIT_TEST"),
                         (("--from", "NOPE"), "has no phase 'NOPE'")):
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "retry", run_id, *args)
        assert code == 2 and out == "", err
        one_error_line(err, needle)
    gated = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, gated.run_id, "awaiting_approval"))
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "retry", gated.run_id)
    assert code == 2
    one_error_line(err, f"run {gated.run_id} is still open (awaiting_approval)")
    await kk.cancel(gated.run_id)
    assert len(await kk.executions(run_id)) == 1

    marker.write_text("ok\n")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "retry", run_id, "--by", "carol", "--wait")
    assert code == 0, err
    assert f"started: {run_id}  (attempt 2 from UNIT_TEST; reused: BUILD (from attempt 1))" in out
    st = await kk.status(run_id)
    assert (st.status, st.attempt, st.started_by) == ("succeeded", 2, "carol")
    assert [(p.name, p.state, p.reused_from) for p in st.phases] == [
        ("BUILD", "succeeded", 1), ("UNIT_TEST", "succeeded", 0), ("DEPLOY", "succeeded", 0)]
    assert st.phases[0].message == "reused from attempt 1"
    assert (await kk.deployments("d-taskrunner", "taskrunner"))[-1].attempt == 2

    # each attempt's status and logs; the reused phase's log is the first attempt's
    one = await kk.status(run_id, attempt=1)
    assert (one.status, one.attempt, one.phases[1].state) == ("failed", 1, "failed")
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id)
    assert code == 0 and f"{run_id}  attempt 2" in out and "reused from attempt 1" in out, out
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id, "--attempt", "1")
    assert code == 1 and "failed" in out
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--phase", "BUILD")
    assert code == 0 and "building taskrunner:" in out, err
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "logs", run_id, "--attempt", "1",
                               "--phase", "UNIT_TEST")
    assert code == 0 and "flaky: no tests-may-pass" in out, err
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id, "--attempt", "3")
    assert code == 2
    one_error_line(err, f"run {run_id} has no attempt 3 (attempts: 1 to 2)")

    # a run that succeeded: only --from runs it again; a deploy is never reused
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "retry", run_id)
    assert code == 2
    one_error_line(err, "nothing failed to retry")
    third = await kk.retry(run_id, from_phase="UNIT_TEST", by="carol")
    st = await kk.wait(third.run_id)
    assert st.attempt == 3 and [(p.name, p.reused_from) for p in st.phases] == [
        ("BUILD", 1), ("UNIT_TEST", 0), ("DEPLOY", 0)]
    assert [r.attempt for r in await kk.deployments("d-taskrunner", "taskrunner")][-2:] == [2, 3]
    assert (await kk.audit(run_id)).consistent

    executions = await kk.executions(run_id)
    histories = [await kk.client.get_workflow_handle(run_id, run_id=e).fetch_history() for e in executions[1:]]
    await assert_replays(histories)
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        for name, history in zip(("reused_build", "from_unit_test"), histories):
            (HISTORIES / f"retry1_{name}.json").write_text(history.to_json())


async def test_retry_of_a_rejected_run_keeps_its_config_unless_fresh_config(kk: Katkit, sha: str) -> None:
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    await kk.reject(handle.run_id, "alice", "not now")
    with pytest.raises(RunFailed, match="rejected"):
        await kk.wait(handle.run_id)
    again = await kk.retry(handle.run_id, by="bob")  # the run's own snapshot: its gate again (a deploy is never reused)
    await wait_for(lambda: status_is(kk, again.run_id, "awaiting_approval"))
    st = await kk.status(handle.run_id)
    assert st.attempt == 2 and [(p.name, p.reused_from) for p in st.phases] == [("BUILD", 1), ("DEPLOY", 0)]
    await kk.cancel(again.run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await kk.wait(again.run_id)
    ungated = kk.config.model_copy(deep=True)
    ungated.tenant("p-taskrunner").approval.required = False
    fresh = Katkit(kk.client, kk.settings, ungated)
    third = await fresh.retry(handle.run_id, fresh_config=True, by="bob")  # katkit.yaml as it is now: no gate
    st = await fresh.wait(third.run_id)
    assert st.attempt == 3 and st.deployed is not None and not st.approval.required
    assert [(p.name, p.reused_from) for p in st.phases] == [("BUILD", 1), ("DEPLOY", 0)]
