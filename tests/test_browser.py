"""A person's path through the Temporal web UI: headless Chromium (Debian's) driven by Playwright finds the
run awaiting approval by its search attributes, sends ``approve`` through the UI's own dialog, and the
run deploys. CI runs it with KATKIT_REQUIRE_BROWSER=1 (a missing Chromium fails instead of skipping)."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.errors import RunFailed
from katkit.sample import commit_files
from katkit.platforms.local import LocalPlatform
from katkit.temporal import free_port, start_dev_server
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from worker import run_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def playwright_api():
    required = os.environ.get("KATKIT_REQUIRE_BROWSER") == "1"
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
    if async_playwright is None or not shutil.which(CHROMIUM):
        msg = "Chromium (apt-get install chromium) or playwright (pip) is missing"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    return async_playwright


ARTIFACTS = Path(os.environ.get("KATKIT_TEST_ARTIFACTS", Path(__file__).parent.parent / ".artifacts")) / "browser"
"""Screenshots the browser tests take: CI keeps the folder as an artifact of the test run (not in git)."""


@pytest.fixture
async def ui(playwright_api, home: Path, config, tmp_path: Path):
    """A dev server with its web UI on free ports, a worker, and a headless Chromium page: (kk, page)."""
    import asyncio

    port, ui_port = free_port(), free_port()
    server = start_dev_server(tmp_path / "ui-server", port=port, ui_port=ui_port)
    try:
        settings = Settings(home=home, address=f"127.0.0.1:{port}", ui_url=f"http://127.0.0.1:{ui_port}",
                            task_queue="katkit-ui-test")
        kk = await Katkit.connect(settings, config)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, kk.client, stop))
        try:
            async with playwright_api() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    yield kk, await browser.new_page(viewport={"width": 1400, "height": 1200})
                finally:
                    await browser.close()
        finally:
            stop.set()
            await worker
    finally:
        server.terminate()
        server.wait()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def send_signal(page, name: str, payload: dict[str, str]) -> None:
    """The UI's own way: More Actions -> Send a Signal -> pick the signal, paste the JSON, Submit."""
    await page.get_by_role("button", name="More Actions").click()
    await page.get_by_role("menuitem", name="Send a Signal").first.click()
    dialog = page.locator("dialog[open], [role=dialog]:visible").filter(has_text="Send a Signal").first
    await dialog.get_by_test_id("signal-select").locator("xpath=..").click()
    await page.get_by_role("option", name=re.compile(rf"^{name}\b")).first.click()  # its description follows
    await dialog.locator(".cm-content[contenteditable=true]").click()
    await page.keyboard.insert_text(json.dumps(payload))
    await dialog.get_by_role("button", name="Submit").click()
    await dialog.wait_for(state="hidden", timeout=15_000)  # the UI closes it once the server took the signal


async def open_from_list(page, kk: Katkit, run_id: str, query: str) -> None:
    """Find the run in the UI's workflow list by a search-attribute query, and open it, as a person would."""
    await page.goto(f"{kk.settings.ui_url}/namespaces/default/workflows?query={urllib.parse.quote(query)}")
    link = page.get_by_role("link", name=run_id)
    await link.wait_for(timeout=30_000)
    await link.click()


async def run_url(kk: Katkit, workflow_id: str) -> str:
    """The page of the workflow's latest run (with its run id: the UI signals exactly that run)."""
    run_id = (await kk.client.get_workflow_handle(workflow_id).describe()).run_id
    return f"{kk.settings.ui_url}/namespaces/default/workflows/{urllib.parse.quote(workflow_id, safe='')}/{run_id}/history"


async def open_run_page(page, kk: Katkit, run_id: str, needle: str) -> str:
    """Open the run in the UI at its User Metadata tab; return the text of its current details (the UI renders the
    markdown in a frame of its own) once it shows ``needle`` (the page asks a worker for them), or after 10 s."""
    await page.goto(await run_url(kk, run_id))
    await page.get_by_role("tab", name="User Metadata").click()
    details = page.frame_locator("iframe#user-metadata-current-details").locator("body")
    try:
        await details.get_by_text(needle).first.wait_for(timeout=10_000)
    except Exception:  # noqa: BLE001 - the caller says what the page showed instead
        pass
    return await details.inner_text(timeout=10_000)


async def test_approve_from_the_web_ui(ui, home: Path, config, sha: str) -> None:
    kk, page = ui
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    await open_from_list(page, kk, handle.run_id, 'KatkitTenant="p-taskrunner" AND KatkitStatus="awaiting_approval"')
    await send_signal(page, "approve", {"by": "alice", "comment": "approved in the web UI"})
    await shot(page, "after-approve")
    st = await kk.wait(handle.run_id)
    assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
    decision = st.approval.decisions[-1]
    assert (decision.by, decision.text, decision.accepted) == ("alice", "approved in the web UI", True)
    running = LocalPlatform(home / "services").current(config.tenant("p-taskrunner"), "taskrunner")
    assert running is not None and running.image == f"taskrunner:{sha}"


async def test_a_runs_page_in_the_web_ui_reads_like_a_pipeline(ui, repo: Path, sha: str) -> None:
    """A waiting run's page says who must approve and the signal to send; a refused signal shows after a refresh;
    a failed run's page shows the failing shard's last log lines."""
    kk, page = ui
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    text = await _page_with(page, kk, handle.run_id, "Awaiting approval by demo, alice")
    assert "signal name approve" in text and '{"by": "<you>", "comment": "why"}' in text, text
    assert f"katkit approve {handle.run_id} --by <you>" in text
    await shot(page, "waiting-run")
    # a signal from someone who may not approve (as `temporal workflow signal` or another tool would send it)
    await kk.client.get_workflow_handle(handle.run_id).signal("approve", {"by": "mallory", "comment": "let me"})
    await wait_for(lambda: _refused(kk, handle.run_id))
    await page.reload()  # the page the person has open, refreshed
    text = await _page_with(page, kk, handle.run_id, "mallory is not an approver")
    assert "approve by mallory" in text and "refused" in text, text
    await shot(page, "refused-signal")
    await kk.reject(handle.run_id, "alice", "not today")

    failing = commit_files(repo, {"ci.sh": "".join(f"echo step {i}\n" for i in range(30)) +
                                  "echo 'FATAL: migration 42 failed' >&2\nexit 3\n"})
    failed = await kk.start_run("d-taskrunner", "taskrunner", sha=failing, by="bob")
    with pytest.raises(RunFailed):
        await kk.wait(failed.run_id)
    text = await _page_with(page, kk, failed.run_id, "FATAL: migration 42 failed")
    assert "Last log lines of BUILD shard" in text and "step 29" in text and "ci.sh exited 3" in text, text
    await shot(page, "failed-run")


async def _page_with(page, kk: Katkit, run_id: str, needle: str) -> str:
    """The run's page once it shows ``needle`` (the UI reads current details when the page loads)."""
    for _ in range(3):
        text = await open_run_page(page, kk, run_id, needle)
        if needle in text:
            return text
    raise AssertionError(f"{needle!r} not on the page of {run_id}:\n{text}")


async def _refused(kk: Katkit, run_id: str) -> bool:
    return any(not d.accepted for d in (await kk.status(run_id)).approval.decisions)
