"""``katkit`` commands on runs and promotions: run, promote, approve, reject, cancel, status, logs, list.

``approve``, ``reject`` and ``status`` take a promotion id too: a decision goes to the step whose run awaits one."""

from __future__ import annotations

import getpass
import sys

import click

from katkit.errors import BadInput, RunFailed
from katkit.models import PromotionStep
from katkit.states import LIVE, State
from starter import complete
from starter.cli_common import connect, err, fail_with_tail, out, print_table, run_async, started
from starter.render import PromotionPrinter, json_text, promotion_lines, shard_ending, status_table


@click.command()
@click.option("--tenant", required=True, help="Tenant to run in, e.g. d-taskrunner.", shell_complete=complete.tenants)
@click.option("--repo", required=True, help="Linked repository name from katkit.yaml.", shell_complete=complete.repos)
@click.option("--sha", help="Commit sha (full or abbreviated).")
@click.option("--branch", help="Branch whose head to run.")
@click.option("--pr", type=int, help="Pull request number whose head to run.")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the run.")
@click.option("--wait", is_flag=True, help="Follow the run until it ends; exit 1 if it fails.")
@run_async
async def run(tenant: str, repo: str, sha: str | None, branch: str | None, pr: int | None, by: str, wait: bool) -> None:
    """Start a run of one commit in one tenant."""
    kk = await connect()
    handle = await kk.start_run(tenant, repo, sha=sha, branch=branch, pr=pr, by=by)
    st = await started(kk, handle, f"  ({repo}@{handle.sha[:12]} -> {tenant})", wait)
    if st is not None:
        out.print(f"[green]succeeded[/]: {st.deployed.image if st.deployed else 'no deployment phase'}")


@click.command()
@click.option("--repo", required=True, help="Linked repository name from katkit.yaml.", shell_complete=complete.repos)
@click.option("--sha", required=True, help="Commit sha (full or abbreviated) to promote.")
@click.option("--through", required=True, help="Tenants in order, comma separated, e.g. d-app,b-app,p-app.",
              shell_complete=complete.tenant_list)
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the promotion.")
@click.option("--wait", is_flag=True, help="Follow the promotion until it ends; exit 1 if it stops.")
@run_async
async def promote(repo: str, sha: str, through: str, by: str, wait: bool) -> None:
    """Promote one sha through several tenants in order, each with its own phases and gate."""
    kk = await connect()
    tenants = [t.strip() for t in through.split(",") if t.strip()]
    handle = await kk.start_promotion(repo, sha, tenants, by)
    await started(kk, handle, f"  ({repo}@{handle.sha[:12]} through {' -> '.join(tenants)})")
    if wait:
        try:
            await kk.wait_promotion(handle.run_id, on_change=PromotionPrinter(out, lambda t: kk.config.tenant(t).approval))
        except RunFailed as exc:
            st = await kk.promotion_status(handle.run_id)
            await fail_with_tail(kk, next((s.run_id for s in st.steps if s.status == State.FAILED), None), exc)
        out.print("[green]promoted[/]")


def _decision(kind: str, text_option: str, doc: str) -> click.Command:
    @click.command(name=kind, help=doc)
    @click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
    @click.option("--by", required=True, help=f"Who {kind}s (must be an approver of the tenant).")
    @click.option(f"--{text_option}", "text", default="", help="Why.")
    @click.option("--key", type=click.Path(dir_okay=False), envvar="KATKIT_SIGNING_KEY", default=None,
                  help="Sign the decision with this SSH ed25519 key (a private key file, or the .pub of a key in "
                       "ssh-agent); the tenant checks it against your keys in katkit.yaml. Env: KATKIT_SIGNING_KEY.")
    @run_async
    async def decide(run_id: str, by: str, text: str, key: str | None, override_freeze: bool = False) -> None:
        await _decide(kind, run_id, by, text, key, override_freeze)

    return decide


approve = _decision("approve", "comment", "Approve the deployment gate of a run (of a promotion: of its step that awaits "
                                          "a decision).")
approve.params.append(click.Option(
    ["--override-freeze"], is_flag=True,
    help="Break the glass: let this run deploy through the tenant's freeze (recorded with --comment; approvers only). "
         "Approves it too when its gate awaits a decision."))
reject = _decision("reject", "reason", "Reject the deployment gate of a run (of a promotion: of its step that awaits a "
                                       "decision); it ends without deploying.")


async def _decide(kind: str, given: str, by: str, text: str, key: str | None = None, override_freeze: bool = False) -> None:
    kk = await connect(with_config=False)
    run_id, step = given, None
    if await kk.is_promotion(given):
        if override_freeze:
            raise BadInput(f"--override-freeze takes a run id; the run of each step of {given}: katkit status {given}")
        step = await kk.awaiting_step(given)
        run_id = step.run_id
    if override_freeze:
        o = await kk.override_freeze(run_id, by, text)
        out.print(f"freeze overridden by {o.by} at {o.at:%Y-%m-%d %H:%M:%S} UTC: {run_id}", markup=False)
        if (await kk.status(run_id)).status != State.AWAITING_APPROVAL:
            return
    d = await (kk.approve if kind == "approve" else kk.reject)(run_id, by, text, key)
    verb, at = ("approved" if kind == "approve" else "rejected"), f"{d.at:%Y-%m-%d %H:%M:%S} UTC"
    if isinstance(step, PromotionStep):
        out.print(f"{verb} {run_id} (step {step.tenant} of {given}) by {d.by} at {at} ({d.verification})", markup=False)
    else:
        out.print(f"{verb} by {d.by} at {at} ({d.verification}): {run_id}", markup=False)


@click.command()
@click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
@run_async
async def cancel(run_id: str) -> None:
    """Cancel a run; its builders are stopped and removed."""
    kk = await connect(with_config=False)
    await kk.cancel(run_id)
    out.print(f"cancel requested: {run_id}")


@click.command()
@click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N", help="Attempt N of the run (katkit retry; default: the latest).")
@run_async
async def status(run_id: str, as_json: bool, attempt: int | None) -> None:
    """Show a run's phases, shards, decisions and deployed image (or a promotion's steps)."""
    kk = await connect(with_config=False)
    if await kk.is_promotion(run_id):
        pst = await kk.promotion_status(run_id)
        if as_json:
            click.echo(json_text(pst))
        else:
            for line in promotion_lines(pst):
                out.print(line, markup=False)
            if pst.note:
                err.print(f"katkit: warning: {pst.note}", markup=False)
        sys.exit(0 if pst.status in (State.SUCCEEDED, State.RUNNING) else 1)
    st = await kk.status(run_id, attempt)
    if as_json:
        click.echo(json_text(st))
    else:
        out.print(status_table(st, kk.settings.run_url(run_id)))
        if st.note:
            err.print(f"katkit: warning: {st.note}", markup=False)
        if st.deployed:
            out.print(f"deployed: {st.deployed.image} (replicas {st.deployed.replicas}, previous {st.deployed.previous_image})")
        if st.rolled_back:
            out.print(f"rolled back by katkit to: {st.rolled_back.image} (replicas {st.rolled_back.replicas})")
        if st.error:
            out.print(f"[red]{st.error}[/]")
    sys.exit(0 if st.status == State.SUCCEEDED or st.status in LIVE else 1)


@click.command()
@click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
@click.option("--phase", help="Only this phase.")
@click.option("--shard", type=click.IntRange(min=1), metavar="N", help="Only shard N, numbered from 1 (its ci.sh has KATKIT_SHARD_INDEX N-1).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the run (or phase) ends; each shard ends with its exit.")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N", help="Attempt N of the run (katkit retry; default: the latest).")
@run_async
async def logs(run_id: str, phase: str | None, shard: int | None, follow: bool, attempt: int | None) -> None:
    """Print a run's builder logs from the log store (also after the builders are gone)."""
    kk = await connect(with_config=False)
    prefix_all = False
    async for label, data, ended in kk.log_events(run_id, phase, shard, follow, attempt=attempt):
        if ended is not None:
            text = f"[katkit] {label}: {shard_ending(ended)}\n" if follow else ""
        else:
            text = data.decode(errors="replace")
            prefix_all = prefix_all or "#" in label
            if prefix_all or phase is None:
                text = "".join(f"{label}| {line}" for line in text.splitlines(keepends=True))
        sys.stdout.write(text)
        sys.stdout.flush()


@click.command(name="list")
@click.option("--tenant", help="Only this tenant.", shell_complete=complete.tenants)
@click.option("--status", help="Only runs in this status, e.g. awaiting_approval.", shell_complete=complete.run_states)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (full shas, ISO 8601 times).")
@run_async
async def list_runs(tenant: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first (through the search attributes)."""
    kk = await connect(with_config=False)
    rows = await kk.list(tenant, status, limit)
    if as_json:
        click.echo(json_text(rows))
        return
    header = ("RUN", "TENANT", "REPO", "SHA", "STATUS", "PHASE", "STARTED (UTC)")
    print_table([header, *((r.run_id, r.tenant, r.repo, r.sha[:12], r.status, r.phase,
                            f"{r.started:%Y-%m-%d %H:%M:%S}" if r.started else "") for r in rows)])


COMMANDS = (run, promote, approve, reject, cancel, status, logs, list_runs)
