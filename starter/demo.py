"""``katkit demo``: the main job end to end on the embedded default, unattended.

A sample repository (ci.sh, katkitconfig.js, servicedescription.js in the DuploCloud format) runs through
a DEV tenant (no approval) and a PROD tenant (approval required); the demo approves the PROD gate itself
as user ``demo`` and ends with the deployed image and the web UI link.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from datetime import datetime, timezone

from rich.console import Console

from katkit.config import load_settings, parse_config
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import SAMPLE_CONFIG_YAML, commit_files, make_sample_repo
from katkit.states import State
from starter.api import Katkit
from starter.dev import ensure_dev_server
from starter.render import PhasePrinter

APPROVER = "demo"


async def run_demo(console: Console) -> None:
    t0 = time.monotonic()
    settings = load_settings()
    home = settings.home
    ensure_dev_server(settings, console)
    demo_dir = home / "demo"
    repo = demo_dir / "taskrunner"
    if (repo / ".git").exists():
        sha = commit_files(repo, {"CHANGES.md": f"demo run at {datetime.now(timezone.utc).isoformat()}\n"}, "demo: new commit")
    else:
        sha = make_sample_repo(repo)
    config_path = demo_dir / "katkit.yaml"
    config_path.write_text(SAMPLE_CONFIG_YAML.format(url=repo))
    config = parse_config(config_path.read_text(), str(config_path))
    console.print(f"sample repo {repo} at {sha[:12]}; config {config_path}")

    # PROD already runs taskrunner with 2 replicas and its own env vars: the deploy must keep both.
    prod = LocalPlatform(home / "services")
    if prod.current(config.tenant("p-taskrunner"), "taskrunner") is None:
        prod.put("p-taskrunner", RunningService(name="taskrunner", image="taskrunner:previous",
                                                extra_config="GREETING=hi", replicas=2))

    kk = await Katkit.connect(settings, config)
    from worker import run_worker

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, kk.client, stop))
    starter = getpass.getuser()
    if starter == APPROVER:
        starter = f"{APPROVER}-starter"
    try:
        for tenant in ("d-taskrunner", "p-taskrunner"):
            handle = await kk.start_run(tenant, "taskrunner", sha=sha, by=starter)
            console.print(f"\n[bold]{tenant}[/]: run {handle.run_id} started by {starter}\n  {handle.url}")
            printer = PhasePrinter(console)
            watch = asyncio.create_task(kk.wait(handle.run_id, on_change=printer))
            if config.tenant(tenant).approval.required:
                await _approve_when_waiting(kk, handle.run_id, handle.url, console, printer)
            st = await watch
        assert st.deployed is not None
        console.print(
            f"\n[green bold]deployed {st.deployed.image}[/] to p-taskrunner "
            f"(replicas {st.deployed.replicas} and env {st.deployed.extra_config!r} kept from the running service; "
            f"previous image {st.deployed.previous_image})"
        )
        console.print(f"web UI: {handle.url}")
        console.print(f"all runs: {settings.ui_url}/namespaces/{settings.namespace}/workflows")
        console.print(f"done in {time.monotonic() - t0:.1f} s. The dev server keeps running for the UI; "
                      "stop it with 'katkit dev --stop'.")
    finally:
        stop.set()
        await worker


async def _approve_when_waiting(kk: Katkit, run_id: str, url: str, console: Console, printer: PhasePrinter) -> None:
    while (await kk.status(run_id)).status not in (State.AWAITING_APPROVAL, State.FAILED, State.CANCELLED):
        await asyncio.sleep(0.2)
    st = await kk.status(run_id)
    if st.status != State.AWAITING_APPROVAL:
        return
    printer(st)
    console.print(
        "\n  PROD needs an approval. A person would give it one of two ways:\n"
        f"   - web UI: open {url}, choose 'Send Signal', signal name [bold]approve[/], "
        'input {"by": "alice", "comment": "ship it"}\n'
        f"   - CLI: katkit approve {run_id} --by alice --comment 'ship it'\n"
        f"  The demo approves it itself now, as user [bold]{APPROVER}[/].\n"
    )
    await kk.approve(run_id, APPROVER, "approved by katkit demo")
