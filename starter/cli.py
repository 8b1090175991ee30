"""``katkit``: the command line, a thin layer over :class:`starter.api.Katkit`.

Exit codes: 0 success, 1 the run failed or was rejected, 2 bad input. Errors are one line
(``--debug`` for the traceback).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import click
from rich.console import Console

from katkit.config import load_config, load_settings
from katkit.errors import KatkitError
from katkit.log import configure_logging
from katkit.models import PromotionStatus
from katkit.states import LIVE, State
from starter.api import Katkit
from starter.render import PhasePrinter, status_table

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    config_path: str | None = None
    debug: bool = False


def _async(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def _katkit(with_config: bool = True) -> Katkit:
    """Connect; with ``with_config`` katkit.yaml must load now, else only when a command needs it (filters)."""
    state = click.get_current_context().find_object(_State)
    path = state.config_path if state is not None else None
    config = load_config(path) if with_config else None
    return await Katkit.connect(load_settings(), config, config_path=path)


def _print_table(table: Sequence[tuple[str, ...]]) -> None:
    """Rows (the header first) in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


async def _warn_without_worker(kk: Katkit) -> None:
    """After starting something: one line when no worker polls the task queue (it would wait in silence)."""
    note = await kk.worker_note()
    if note:
        err.print(f"katkit: warning: {note}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="KATKIT_CONFIG", type=click.Path(dir_okay=False),
              help="katkit.yaml to use (default: ./katkit.yaml, then ~/.katkit/katkit.yaml).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """katkit: build, test and deploy a chosen commit into tenants, as durable Temporal workflows."""
    state = ctx.ensure_object(_State)
    state.config_path, state.debug = config_path, debug
    configure_logging("DEBUG" if debug else "WARNING")


@cli.command()
@click.option("--tenant", required=True, help="Tenant to run in, e.g. d-taskrunner.")
@click.option("--repo", required=True, help="Linked repository name from katkit.yaml.")
@click.option("--sha", help="Commit sha (full or abbreviated).")
@click.option("--branch", help="Branch whose head to run.")
@click.option("--pr", type=int, help="Pull request number whose head to run.")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the run.")
@click.option("--wait", is_flag=True, help="Follow the run until it ends; exit 1 if it fails.")
@_async
async def run(tenant: str, repo: str, sha: str | None, branch: str | None, pr: int | None, by: str, wait: bool) -> None:
    """Start a run of one commit in one tenant."""
    kk = await _katkit()
    handle = await kk.start_run(tenant, repo, sha=sha, branch=branch, pr=pr, by=by)
    verb = "already running" if handle.existing else "started"
    out.print(f"{verb}: {handle.run_id}  ({repo}@{handle.sha[:12]} -> {tenant})\n  {handle.url}")
    await _warn_without_worker(kk)
    if wait:
        st = await kk.wait(handle.run_id, on_change=PhasePrinter(out))
        out.print(f"[green]succeeded[/]: {st.deployed.image if st.deployed else 'no deployment phase'}")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--by", required=True, help="Who approves (must be an approver of the tenant).")
@click.option("--comment", default="", help="Why.")
@_async
async def approve(run_id: str, by: str, comment: str) -> None:
    """Approve the deployment gate of a run."""
    await _decide("approve", run_id, by, comment)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--by", required=True, help="Who rejects (must be an approver of the tenant).")
@click.option("--reason", default="", help="Why.")
@_async
async def reject(run_id: str, by: str, reason: str) -> None:
    """Reject the deployment gate of a run: it ends without deploying."""
    await _decide("reject", run_id, by, reason)


async def _decide(kind: str, run_id: str, by: str, text: str) -> None:
    kk = await _katkit(with_config=False)
    d = await (kk.approve if kind == "approve" else kk.reject)(run_id, by, text)
    out.print(f"{'approved' if kind == 'approve' else 'rejected'} by {d.by} at {d.at:%Y-%m-%d %H:%M:%S} UTC: {run_id}")


@cli.command()
@click.argument("run_id", metavar="RUN")
@_async
async def cancel(run_id: str) -> None:
    """Cancel a run; its builders are stopped and removed."""
    kk = await _katkit(with_config=False)
    await kk.cancel(run_id)
    out.print(f"cancel requested: {run_id}")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_async
async def status(run_id: str, as_json: bool) -> None:
    """Show a run's phases, shards, decisions and deployed image."""
    kk = await _katkit(with_config=False)
    if run_id.startswith("promote-"):
        pst = await kk.promotion_status(run_id)
        if as_json:
            click.echo(pst.model_dump_json(indent=2))
        else:
            out.print(f"{pst.promotion_id}  {pst.status}  ({pst.repo}@{pst.sha[:12]}, by {pst.started_by})")
            for step in pst.steps:
                out.print(f"  {step.tenant:<18} {step.status:<12} {step.run_id}  {step.error or step.image}".rstrip())
            if pst.note:
                err.print(f"katkit: warning: {pst.note}")
        sys.exit(0 if pst.status in (State.SUCCEEDED, State.RUNNING) else 1)
    st = await kk.status(run_id)
    if as_json:
        click.echo(st.model_dump_json(indent=2))
    else:
        out.print(status_table(st, kk.settings.run_url(run_id)))
        if st.note:
            err.print(f"katkit: warning: {st.note}")
        if st.deployed:
            out.print(f"deployed: {st.deployed.image} (replicas {st.deployed.replicas}, previous {st.deployed.previous_image})")
        if st.error:
            out.print(f"[red]{st.error}[/]")
    sys.exit(0 if st.status == State.SUCCEEDED or st.status in LIVE else 1)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--phase", help="Only this phase.")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the run (or phase) ends.")
@_async
async def logs(run_id: str, phase: str | None, follow: bool) -> None:
    """Print a run's builder logs from the log store (also after the builders are gone)."""
    kk = await _katkit(with_config=False)
    prefix_all = False
    async for label, data in kk.follow_logs(run_id, phase, follow):
        text = data.decode(errors="replace")
        prefix_all = prefix_all or "#" in label
        if prefix_all or phase is None:
            text = "".join(f"{label}| {line}" for line in text.splitlines(keepends=True))
        sys.stdout.write(text)
        sys.stdout.flush()


@cli.command(name="list")
@click.option("--tenant", help="Only this tenant.")
@click.option("--status", help="Only runs in this status, e.g. awaiting_approval.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@_async
async def list_runs(tenant: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first (through the search attributes)."""
    kk = await _katkit(with_config=False)
    rows = await kk.list(tenant, status, limit)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    header = ("RUN", "TENANT", "REPO", "SHA", "STATUS", "PHASE", "STARTED (UTC)")
    table = [header, *((r.run_id, r.tenant, r.repo, r.sha, r.status, r.phase, r.started) for r in rows)]
    _print_table(table)


@cli.command()
@click.option("--repo", required=True, help="Linked repository name from katkit.yaml.")
@click.option("--sha", required=True, help="Commit sha (full or abbreviated) to promote.")
@click.option("--through", required=True, help="Tenants in order, comma separated, e.g. d-app,b-app,p-app.")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the promotion.")
@click.option("--wait", is_flag=True, help="Follow the promotion until it ends; exit 1 if it stops.")
@_async
async def promote(repo: str, sha: str, through: str, by: str, wait: bool) -> None:
    """Promote one sha through several tenants in order, each with its own phases and gate."""
    kk = await _katkit()
    tenants = [t.strip() for t in through.split(",") if t.strip()]
    handle = await kk.start_promotion(repo, sha, tenants, by)
    verb = "already running" if handle.existing else "started"
    out.print(f"{verb}: {handle.run_id}  ({repo}@{handle.sha[:12]} through {' -> '.join(tenants)})\n  {handle.url}")
    await _warn_without_worker(kk)
    if wait:
        seen: dict[str, str] = {}

        def show(st: PromotionStatus) -> None:
            if st.note != seen.get(""):
                seen[""] = st.note
                if st.note:
                    out.print(f"  [yellow]waiting: {st.note}[/]")
            for step in st.steps:
                if seen.get(step.tenant) != step.status:
                    seen[step.tenant] = step.status
                    out.print(f"  {step.tenant:<18} {step.status:<12} {step.run_id}  {step.error or step.image}".rstrip())

        await kk.wait_promotion(handle.run_id, on_change=show)
        out.print("[green]promoted[/]")


@cli.command()
@click.option("--tenant", required=True, help="Tenant whose service to roll back.")
@click.option("--service", required=True, help="Service name (servicedescription's Name).")
@click.option("--to", "to_sha", help="Roll back to the image deployed from this sha (default: the previous image).")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the rollback.")
@click.option("--wait", is_flag=True, help="Follow the rollback until it ends; exit 1 if it fails.")
@_async
async def rollback(tenant: str, service: str, to_sha: str | None, by: str, wait: bool) -> None:
    """Redeploy the previous (or named) image, keeping env vars and replicas, through the same lock and gate."""
    kk = await _katkit()
    handle = await kk.start_rollback(tenant, service, to_sha, by)
    out.print(f"{'already running' if handle.existing else 'started'}: {handle.run_id}\n  {handle.url}")
    await _warn_without_worker(kk)
    if wait:
        st = await kk.wait(handle.run_id, on_change=PhasePrinter(out))
        out.print(f"[green]rolled back[/]: {st.deployed.image if st.deployed else ''}")


@cli.command()
@click.option("--tenant", help="Only this tenant.")
@_async
async def locks(tenant: str | None) -> None:
    """Show who holds each tenant service's deploy lock and who waits, in order."""
    kk = await _katkit(with_config=False)
    found = await kk.locks(tenant)
    if not found:
        click.echo("no deploy locks held or awaited")
    for st in found:
        state = f"held by {st.holder.run_id} (since {st.holder.since:%H:%M:%S})" if st.holder else "free"
        click.echo(f"{st.tenant}/{st.service} [{st.policy}]: {state}")
        for n, w in enumerate(st.waiters, 1):
            click.echo(f"  {n}. {w.run_id} (waiting since {w.since:%H:%M:%S})")


@cli.command()
@click.option("--tenant", required=True, help="Tenant whose deployments to show.")
@click.option("--service", help="Only this service (default: every service of the tenant).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@_async
async def history(tenant: str, service: str | None, as_json: bool) -> None:
    """What runs now in a tenant and what ran before: every deployment and rollback, who started and approved it."""
    kk = await _katkit()
    found = await kk.history(tenant, service)
    if as_json:
        rows = [{"tenant": tenant, "service": name, "running_now": i == len(records) - 1, **r.model_dump(mode="json")}
                for name, records in found.items() for i, r in enumerate(records)]
        click.echo(json.dumps(rows, indent=2))
        return
    if not any(found.values()):
        click.echo(f"no deployments of {service or 'any service'} in {tenant}")
        return
    header = ("SERVICE", "WHEN (UTC)", "KIND", "IMAGE", "RUN", "STARTED BY", "APPROVED BY", "")
    table = [header]
    for name, records in found.items():
        for i, r in enumerate(reversed(records)):
            table.append((name, r.at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.image, r.run_id, r.started_by,
                          ", ".join(r.approved_by) or "-", "running now" if i == 0 else ""))
    _print_table(table)


@cli.command()
@click.option("--repo", required=True, help="Linked GitHub repository name from katkit.yaml.")
@click.option("--json", "as_json", is_flag=True, help="Print the PRs as JSON.")
@_async
async def prs(repo: str, as_json: bool) -> None:
    """List open PRs against the link's home branch: head sha, author and katkit's latest state per tenant."""
    kk = await _katkit()
    pulls = await kk.prs(repo)
    if as_json:
        click.echo(json.dumps([p.model_dump() for p in pulls], indent=2))
        return
    if not pulls:
        click.echo(f"no open pull requests against {kk.config.link(repo).branch}")
    header = ("PR", "HEAD", "AUTHOR", "KATKIT", "TITLE")
    table = [header, *((f"#{p.number}", p.sha[:12], p.author,
                        ", ".join(f"{t}: {s}" for t, s in p.runs.items()) or "-", p.title) for p in pulls)]
    _print_table(table)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8090, show_default=True, type=int)
@_async
async def webhook(host: str, port: int) -> None:
    """Serve GitHub webhooks: signed pushes and PRs start runs in the tenants that opted in."""
    from katkit.errors import ConfigError
    from starter.webhook import run_webhook

    secret = load_settings().github_webhook_secret
    if not secret:
        raise ConfigError("KATKIT_GITHUB_WEBHOOK_SECRET is not set; set it to the secret of the repository's webhook")
    kk = await _katkit()
    configure_logging("INFO")
    await run_webhook(kk, secret, host, port, ready=lambda addr: out.print(
        f"katkit webhook listening on http://{addr[0]}:{addr[1]}/ (GitHub: content type application/json, "
        "events: push and pull_request)"))


@cli.command()
def worker() -> None:
    """Run a worker on the katkit task queue (any number may run)."""
    from worker import run_worker

    configure_logging("INFO")
    asyncio.run(run_worker(load_settings()))


@cli.command()
@click.option("--stop", is_flag=True, help="Stop the dev server and the worker this katkit home left running.")
@click.option("--join", is_flag=True, help="Add a worker to a Temporal server another katkit home started.")
def dev(stop: bool, join: bool) -> None:
    """Run the Temporal dev server (web UI on :8233, state on disk) and a worker, until Ctrl-C."""
    from starter.dev import run_dev, stop_dev

    if stop:
        out.print(stop_dev())
        return
    run_dev(out, join=join)


@cli.command()
def demo() -> None:
    """The main job end to end: a sample repo through DEV and PROD (approved as user 'demo'), on the embedded default."""
    from starter.demo import run_demo

    asyncio.run(run_demo(out))


def main(argv: list[str] | None = None) -> None:
    """``katkit``. Given ``argv`` (in-process callers, tests) it ends in SystemExit; as the process's entry point
    (no ``argv``) it ends the process itself, with the exit code its command decided."""
    if argv is not None:
        _main(argv)
        return
    import logging
    import os
    import traceback

    try:
        _main(None)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - only --debug lets one through: its traceback, as Python prints it
        traceback.print_exc()
        code = 1
    # Temporal's Rust core runs a Tokio runtime the SDK never shuts down (sdk-python#300): a thread of it delivering an
    # RPC result re-enters Python while the interpreter finalizes and aborts the process after the command is done.
    # So the process leaves here, output flushed, and is never finalized: its exit code is the one decided above.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python would exit 120
            code = code or 120
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        cli.main(args=argv, prog_name="katkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("katkit: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        err.print(f"katkit: error: {exc.format_message()}")
        sys.exit(2)
    except KatkitError as exc:
        if debug:
            raise
        err.print(f"katkit: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback with --debug
        if debug:
            raise
        err.print(f"katkit: unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(run with --debug for the traceback)")
        sys.exit(1)

