"""A run's page in the web UI reads like a pipeline: its current details (what the UI renders as markdown) say
who must approve and exactly how, list every decision (refused ones with why), show a failed shard's last log
lines, and a failed run's Result is its one line, without a Python stack trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata

from katkit.errors import RunFailed
from katkit.names import deploy_lock_id
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import status_is, wait_for


async def page(kk: Katkit, workflow_id: str) -> str:
    """What the web UI shows as the workflow's current details (it asks the same built-in query)."""
    meta = await kk.client.get_workflow_handle(workflow_id).query("__temporal_workflow_metadata",
                                                                  result_type=WorkflowMetadata)
    return meta.current_details


@pytest.mark.usefixtures("worker")
async def test_a_waiting_runs_page_says_who_must_approve_and_how_and_lists_refusals(kk: Katkit, sha: str) -> None:
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    text = await page(kk, handle.run_id)
    assert "Awaiting approval by demo, alice** (0 of 1 approvals)" in text, text
    assert 'signal name `approve`, input `{"by": "<you>", "comment": "why"}`' in text
    assert f"`katkit approve {handle.run_id} --by <you>`" in text
    assert "| BUILD | ✔ succeeded |" in text and "shard 1/1: succeeded, exit 0" in text
    await kk.client.get_workflow_handle(handle.run_id).signal("approve", {"by": "mallory"})
    await wait_for(lambda: _has(kk, handle.run_id, "refused"))
    text = await page(kk, handle.run_id)
    assert "approve by **mallory**" in text and "**refused**: mallory is not an approver of tenant p-taskrunner" in text
    await kk.approve(handle.run_id, "alice", "ship it")
    st = await kk.wait(handle.run_id)
    text = await page(kk, handle.run_id)
    assert "approve by **alice**" in text and "ship it (accepted, unverified)" in text
    assert f"**Deployed** `{st.deployed.image}`" in text and "Awaiting approval" not in text
    lock = await page(kk, deploy_lock_id(kk.settings.task_queue, "p-taskrunner", "taskrunner"))
    assert "### taskrunner in p-taskrunner: free" in lock and f"| deploy | `{st.deployed.image}` |" in lock
    assert "bob (approved by alice)" in lock


@pytest.mark.usefixtures("worker")
async def test_a_failed_runs_page_shows_the_failing_shards_last_log_lines_and_its_result_no_stack(
        kk: Katkit, repo: Path) -> None:
    script = "".join(f"echo line {i}\n" for i in range(1, 31)) + "echo 'the real cause: no such table' >&2\nexit 3\n"
    sha = commit_files(repo, {"ci.sh": script})
    handle = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    with pytest.raises(RunFailed, match="ci.sh exited 3"):
        await kk.wait(handle.run_id)
    text = await page(kk, handle.run_id)
    assert "**failed:** phase BUILD failed: shard 1/1: ci.sh exited 3" in text, text
    tail = text.split("Last log lines of BUILD shard 1/1", 1)[1]
    assert "the real cause: no such table" in tail and "line 30" in tail and "ci.sh exited 3" in tail
    assert "line 13\n" in tail and "line 12\n" not in tail  # the last 20 lines (the agent's exit line too)
    st = await kk.status(handle.run_id)
    assert "the real cause" in st.phases[0].shards[0].log_tail
    history = await kk.client.get_workflow_handle(handle.run_id).fetch_history()
    failure = history.events[-1].workflow_execution_failed_event_attributes.failure
    assert failure.message.startswith("phase BUILD failed: shard 1/1: ci.sh exited 3") and "\n" not in failure.message
    assert failure.stack_trace == "" and failure.application_failure_info.type == "RunFailed"


@pytest.mark.usefixtures("worker")
async def test_a_promotion_and_its_runs_link_to_each_other(kk: Katkit, sha: str) -> None:
    handle = await kk.start_promotion("taskrunner", sha, ["d-taskrunner", "p-taskrunner"], by="bob")
    child = f"run-p-taskrunner-taskrunner-{sha[:12]}"
    await wait_for(lambda: _has(kk, child, "Awaiting approval"))
    assert f"Step of promotion [{handle.run_id}](/namespaces/default/workflows/{handle.run_id})" in await page(kk, child)
    text = await page(kk, handle.run_id)
    assert f"[run-d-taskrunner-taskrunner-{sha[:12]}](/namespaces/default/workflows/" in text
    assert "| d-taskrunner | ✔ succeeded |" in text and "| p-taskrunner | running |" in text
    await kk.approve(child, "alice")
    await kk.wait_promotion(handle.run_id)
    assert "✔ succeeded" in await page(kk, handle.run_id)


async def _has(kk: Katkit, workflow_id: str, needle: str) -> bool:
    try:
        return needle in await page(kk, workflow_id)
    except Exception:  # noqa: BLE001 - not started yet
        return False
