"""``katkit demo``: the main job end to end on the embedded default, unattended, handing over a working setup.

A sample repository (ci.sh, katkitconfig.js, servicedescription.js in the DuploCloud format) runs through
a DEV tenant (no approval) and a PROD tenant (approval required); the demo approves the PROD gate itself
as user ``demo`` and ends with the deployed image and the web UI link. The dev server and the worker it ran
on keep running in the background, its katkit.yaml is where katkit looks, and it prints next steps that work
as printed in a new shell (``tests/test_demo_handover.py`` runs them).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from katkit.config import Settings, config_path, load_settings, parse_config
from katkit.errors import InfraError, KatkitError
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import SAMPLE_CONFIG_YAML, commit_files, make_sample_repo
from katkit.states import State
from starter.api import Katkit
from starter.dev import background_worker, dev_server, ensure_dev_server, start_background_worker
from starter.render import PhasePrinter

APPROVER = "demo"
WORKER_START_S = 60.0
DEMO_CONFIG_MARK = SAMPLE_CONFIG_YAML.splitlines()[0]
CARRIED_SETTINGS = ("KATKIT_HOME", "KATKIT_ADDRESS", "TEMPORAL_ADDRESS", "KATKIT_NAMESPACE", "TEMPORAL_NAMESPACE",
                    "KATKIT_TASK_QUEUE", "KATKIT_UI_URL", "KATKIT_LOG_DIR", "KATKIT_LOG_STORE")
"""The environment a new shell needs to reach what the demo leaves running (when set for the demo)."""


async def run_demo(console: Console) -> None:
    t0 = time.monotonic()
    settings = load_settings()
    home = settings.home
    ensure_dev_server(settings, console)
    worker_pid = start_background_worker(settings, console)  # it starts while the sample repo is made
    demo_dir = home / "demo"
    repo = demo_dir / "taskrunner"
    if (repo / ".git").exists():
        sha = commit_files(repo, {"CHANGES.md": f"demo run at {datetime.now(timezone.utc).isoformat()}\n"}, "demo: new commit")
    else:
        sha = make_sample_repo(repo)
    config_file = _demo_config_file(home)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(SAMPLE_CONFIG_YAML.format(url=repo))
    config = parse_config(config_file.read_text(), str(config_file))
    console.print(f"sample repo {repo} at {sha[:12]}; config {config_file}")

    # PROD already runs taskrunner with 2 replicas and its own env vars: the deploy must keep both.
    prod = LocalPlatform(home / "services")
    if prod.current(config.tenant("p-taskrunner"), "taskrunner") is None:
        prod.put("p-taskrunner", RunningService(name="taskrunner", image="taskrunner:previous",
                                                extra_config="GREETING=hi", replicas=2))

    kk = await Katkit.connect(settings, config)
    await _wait_for_worker(kk, settings, worker_pid)
    starter = getpass.getuser()
    if starter == APPROVER:
        starter = f"{APPROVER}-starter"
    run_ids: dict[str, str] = {}
    for tenant in ("d-taskrunner", "p-taskrunner"):
        handle = await kk.start_run(tenant, "taskrunner", sha=sha, by=starter)
        run_ids[tenant] = handle.run_id
        console.print(f"\n[bold]{tenant}[/]: run {handle.run_id} started by {starter}\n  {handle.url}")
        printer = PhasePrinter(console)
        watch = asyncio.create_task(kk.wait(handle.run_id, on_change=printer))
        if config.tenant(tenant).approval.required:
            await _approve_when_waiting(kk, handle.run_id, handle.url, console, printer)
        st = await watch
    assert st.deployed is not None
    console.print(
        f"\n[green bold]deployed {st.deployed.image}[/] to p-taskrunner "
        f"(replicas {st.deployed.replicas} and env {', '.join(st.deployed.env_names) or 'none'} kept from the running service; "
        f"previous image {st.deployed.previous_image})"
    )
    console.print(f"web UI: {handle.url}")
    console.print(f"all runs: {settings.ui_url}/namespaces/{settings.namespace}/workflows")
    console.print(f"done in {time.monotonic() - t0:.1f} s.")
    _print_handover(console, settings, config_file, run_ids["d-taskrunner"])


def _demo_config_file(home: Path) -> Path:
    """The home's katkit.yaml (where katkit looks), unless it is one the demo did not write."""
    path = home / "katkit.yaml"
    if not path.exists() or path.read_text(errors="replace").startswith(DEMO_CONFIG_MARK):
        return path
    return home / "demo" / "katkit.yaml"


async def _wait_for_worker(kk: Katkit, settings: Settings, pid: int) -> None:
    worker = background_worker(settings)
    deadline = time.monotonic() + WORKER_START_S
    while not await kk.worker_polling():
        if worker.pid() != pid:
            raise InfraError(f"the background worker exited at start: {worker.log_tail()}; see {worker.log_file}")
        if time.monotonic() > deadline:
            raise InfraError(f"the background worker did not poll within {WORKER_START_S:.0f} s; see {worker.log_file}")
        await asyncio.sleep(0.1)


def _print_handover(console: Console, settings: Settings, config_file: Path, dev_run: str) -> None:
    """What keeps running, and next steps that work as printed in a new shell (the export line when needed)."""
    server, worker = dev_server(settings), background_worker(settings)
    console.print(f"\nThe Temporal dev server (pid {server.pid()}, log {server.log_file}) and a worker (pid {worker.pid()}, "
                  f"log {worker.log_file}) keep running; katkit.yaml is {config_file}.", markup=False)
    exports = {k: os.environ[k] for k in CARRIED_SETTINGS if k in os.environ}
    for k in ("KATKIT_HOME", "KATKIT_LOG_DIR"):
        if k in exports:
            exports[k] = str(Path(exports[k]).absolute())
    try:
        found: Path | None = config_path()
    except KatkitError:
        found = None
    if "KATKIT_CONFIG" in os.environ or found is None or found.resolve() != config_file.resolve():
        exports["KATKIT_CONFIG"] = str(config_file.absolute())
    katkit = _katkit_command()
    lines = [f"export {' '.join(f'{k}={shlex.quote(v)}' for k, v in exports.items())}"] if exports else []
    lines += [f"{katkit} run --tenant d-taskrunner --repo taskrunner --branch main --wait   # your first own run",
              f"{katkit} logs {dev_run} --phase UNIT_TEST",
              f"{katkit} list",
              f"{katkit} dev --stop   # stops the dev server and the worker"]
    console.print("Next, in a new shell:", markup=False)
    for line in lines:
        console.print(f"  {line}", markup=False)


def _katkit_command() -> str:
    """How a new shell runs this katkit: as dev.sh was called (it says so in KATKIT_PROG), else ``katkit`` when
    that is this script, else this script's path."""
    via = os.environ.get("KATKIT_PROG")
    if via:
        return shlex.quote(via)
    script = Path(sys.argv[0])
    if script.name != "katkit":
        return "katkit"
    on_path = shutil.which("katkit")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "katkit"
    return shlex.quote(str(script.absolute()))


async def _approve_when_waiting(kk: Katkit, run_id: str, url: str, console: Console, printer: PhasePrinter) -> None:
    while (await kk.status(run_id)).status not in (State.AWAITING_APPROVAL, State.FAILED, State.CANCELLED):
        await asyncio.sleep(0.2)
    st = await kk.status(run_id)
    if st.status != State.AWAITING_APPROVAL:
        return
    printer(st)
    console.print(
        "\n  PROD needs an approval. A person would give it one of two ways:\n"
        f"   - web UI: open {url}, tab User Metadata (it says who may approve and how), then More Actions -> "
        'Send a Signal, signal name [bold]approve[/], input {"by": "alice", "comment": "ship it"}\n'
        f"   - CLI: {_katkit_command()} approve {run_id} --by alice --comment 'ship it'\n"
        f"  The demo approves it itself now, as user [bold]{APPROVER}[/].\n"
    )
    await kk.approve(run_id, APPROVER, "approved by katkit demo")
