"""``katkit`` commands on tenant services and repositories: rollback, locks, history, prs."""

from __future__ import annotations

import csv
import getpass
import io

import click

from katkit.errors import BadInput
from katkit.platforms import DeploymentRecord, RecordedDecision
from starter import complete
from starter.cli_common import connect, out, print_table, run_async, started
from starter.ledger import parse_since
from starter.render import json_text


@click.command()
@click.option("--tenant", required=True, help="Tenant whose service to roll back.", shell_complete=complete.tenants)
@click.option("--service", required=True, help="Service name (servicedescription's Name).")
@click.option("--to", "to_sha", help="Roll back to the image deployed from this sha (default: the previous image).")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the rollback.")
@click.option("--wait", is_flag=True, help="Follow the rollback until it ends; exit 1 if it fails.")
@run_async
async def rollback(tenant: str, service: str, to_sha: str | None, by: str, wait: bool) -> None:
    """Redeploy the previous (or named) image, keeping env vars and replicas, through the same lock and gate."""
    kk = await connect()
    handle = await kk.start_rollback(tenant, service, to_sha, by)
    st = await started(kk, handle, "", wait)
    if st is not None:
        out.print(f"[green]rolled back[/]: {st.deployed.image if st.deployed else ''}")


@click.command()
@click.option("--tenant", help="Only this tenant.", shell_complete=complete.tenants)
@run_async
async def locks(tenant: str | None) -> None:
    """Show who holds each tenant service's deploy lock and who waits, in order."""
    kk = await connect(with_config=False)
    found = await kk.locks(tenant)
    if not found:
        click.echo("no deploy locks held or awaited")
    for st in found:
        state = f"held by {st.holder.run_id} (since {st.holder.since:%H:%M:%S})" if st.holder else "free"
        click.echo(f"{st.tenant}/{st.service} [{st.policy}]: {state}")
        for n, w in enumerate(st.waiters, 1):
            click.echo(f"  {n}. {w.run_id} (waiting since {w.since:%H:%M:%S})")


HISTORY_COLUMNS = ("tenant", "service", "kind", "at", "ended_at", "sha", "image", "previous_image", "run_id", "attempt",
                   "started_by", "approved_by", "approvals", "freeze_overrides", "failed_phase", "running_now")
"""The columns of ``katkit history --csv`` (an auditor's spreadsheet), in order."""


def _decisions(found: list[RecordedDecision]) -> str:
    return "; ".join(f"{d.by}" + (f" at {d.at.isoformat()}" if d.at else "")
                     + (f" ({d.verification})" if d.verification else "") + (f": {d.comment}" if d.comment else "")
                     for d in found)


def _approved_by(r: DeploymentRecord) -> str:
    """Who approved, each with what proved it (``alice (verified (ssh key SHA256:...))``) when the record says."""
    if any(d.verification for d in r.approvals):
        return ", ".join(f"{d.by} ({d.verification})" if d.verification else d.by for d in r.approvals)
    return ", ".join(r.approved_by) or "-"


def history_rows(tenant: str, found: dict[str, list[DeploymentRecord]]) -> list[dict[str, object]]:
    """One row per deploy or rollback, oldest first: what ``--json`` and ``--csv`` print."""
    rows: list[dict[str, object]] = []
    for name, records in found.items():
        for i, r in enumerate(records):
            rows.append({"tenant": tenant, "service": name, "running_now": i == len(records) - 1,
                         **r.model_dump(mode="json")})
    return rows


@click.command()
@click.option("--tenant", required=True, help="Tenant whose deployments to show.", shell_complete=complete.tenants)
@click.option("--service", help="Only this service (default: every service of the tenant).")
@click.option("--since", help="Only deployments since a date/time (2026-11-01, 2026-11-01T09:00Z) or for a duration (7d).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the records as CSV (one row per deploy or rollback).")
@run_async
async def history(tenant: str, service: str | None, since: str | None, as_json: bool, as_csv: bool) -> None:
    """What runs now in a tenant and what ran before: every deployment and rollback, who started and approved it."""
    if as_json and as_csv:
        raise BadInput("--json and --csv: choose one")
    after = parse_since(since) if since is not None else None
    kk = await connect()
    found = await kk.history(tenant, service, after)
    if as_json:
        click.echo(json_text(history_rows(tenant, found)))
        return
    if as_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for name, records in found.items():
            for i, r in enumerate(records):
                row: dict[str, object] = {**r.model_dump(mode="json"), "tenant": tenant, "service": name,
                                          "running_now": i == len(records) - 1, "approved_by": ", ".join(r.approved_by),
                                          "approvals": _decisions(r.approvals),
                                          "freeze_overrides": _decisions(r.freeze_overrides)}
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        click.echo(buf.getvalue(), nl=False)
        return
    if not any(found.values()):
        click.echo(f"no deployments of {service or 'any service'} in {tenant}" + (f" since {after:%Y-%m-%d %H:%M} UTC"
                                                                                   if after else ""))
        return
    header = ("SERVICE", "WHEN (UTC)", "KIND", "IMAGE", "RUN", "STARTED BY", "APPROVED BY", "")
    table = [header]
    for name, records in found.items():
        for i, r in enumerate(reversed(records)):
            table.append((name, r.at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.image, r.run_id, r.started_by,
                          _approved_by(r), "running now" if i == 0 else ""))
    print_table(table)


@click.command()
@click.option("--repo", required=True, help="Linked GitHub repository name from katkit.yaml.", shell_complete=complete.repos)
@click.option("--json", "as_json", is_flag=True, help="Print the PRs as JSON.")
@run_async
async def prs(repo: str, as_json: bool) -> None:
    """List open PRs against the link's home branch: head sha, author and katkit's latest state per tenant."""
    kk = await connect()
    pulls = await kk.prs(repo)
    if as_json:
        click.echo(json_text(pulls))
        return
    if not pulls:
        click.echo(f"no open pull requests against {kk.config.link(repo).branch}")
    header = ("PR", "HEAD", "AUTHOR", "KATKIT", "TITLE")
    print_table([header, *((f"#{p.number}", p.sha[:12], p.author,
                            ", ".join(f"{t}: {s}" for t, s in p.runs.items()) or "-", p.title) for p in pulls)])


COMMANDS = (rollback, locks, history, prs)
