"""A person's path through the Temporal web UI: headless Chromium (Debian's) driven by Playwright finds the
run awaiting approval by its search attributes, sends ``approve`` through the UI's own dialog, and the
run deploys. CI runs it with KATKIT_REQUIRE_BROWSER=1 (a missing Chromium fails instead of skipping)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.platforms.local import LocalPlatform
from katkit.temporal import start_dev_server
from starter.api import Katkit
from tests.conftest import status_is, wait_for
from worker import run_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


async def test_approve_from_the_web_ui(playwright_api, home: Path, config, sha: str, tmp_path: Path) -> None:
    import asyncio

    port, ui_port = _free_port(), _free_port()
    server = start_dev_server(tmp_path / "ui-server", port=port, ui_port=ui_port)
    try:
        settings = Settings(home=home, address=f"127.0.0.1:{port}", ui_url=f"http://127.0.0.1:{ui_port}",
                            task_queue="katkit-ui-test")
        kk = await Katkit.connect(settings, config)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, kk.client, stop))
        try:
            handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
            await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
            async with playwright_api() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                query = 'KatkitTenant="p-taskrunner" AND KatkitStatus="awaiting_approval"'
                await page.goto(f"{settings.ui_url}/namespaces/default/workflows?query={urllib.parse.quote(query)}")
                link = page.get_by_role("link", name=handle.run_id)
                await link.wait_for(timeout=30_000)  # found through the search attributes
                await link.click()
                await page.get_by_role("button", name="More Actions").click()
                await page.get_by_role("menuitem", name="Send a Signal").first.click()
                dialog = page.locator("dialog[open], [role=dialog]:visible").filter(has_text="Send a Signal").first
                await dialog.get_by_test_id("signal-select").locator("xpath=..").click()
                await page.get_by_role("option", name="approve", exact=True).click()
                await dialog.locator(".cm-content[contenteditable=true]").click()
                await page.keyboard.insert_text(json.dumps({"by": "alice", "comment": "approved in the web UI"}))
                await dialog.get_by_role("button", name="Submit").click()
                await page.screenshot(path=str(tmp_path / "after-approve.png"))
                await browser.close()
            st = await kk.wait(handle.run_id)
            assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
            decision = st.approval.decisions[-1]
            assert (decision.by, decision.text, decision.accepted) == ("alice", "approved in the web UI", True)
            running = LocalPlatform(home / "services").current(config.tenant("p-taskrunner"), "taskrunner")
            assert running is not None and running.image == f"taskrunner:{sha}"
        finally:
            stop.set()
            await worker
    finally:
        server.terminate()
        server.wait()
