"""``katkit freeze``, ``unfreeze`` and ``freezes``: a tenant's freezes (ad hoc ones in Temporal, windows in katkit.yaml)."""

from __future__ import annotations

import getpass

import click

from starter import complete
from starter.cli_common import connect, out, print_table, run_async
from starter.freezes import parse_until
from starter.render import json_text


@click.command()
@click.option("--tenant", required=True, help="Tenant whose deploys to freeze.", shell_complete=complete.tenants)
@click.option("--until", "until_text", required=True, help="When it ends: 2026-12-27T09:00Z (no zone: UTC), or 2h, 3d.")
@click.option("--reason", required=True, help="Why (shown to every run that waits).")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who sets the freeze.")
@run_async
async def freeze(tenant: str, until_text: str, reason: str, by: str) -> None:
    """Freeze a tenant's deploys until a time: runs still build and test; their deploys wait (or fail: on_freeze)."""
    until = parse_until(until_text)
    kk = await connect()
    await kk.freeze(tenant, until, reason, by)
    out.print(f"frozen: {tenant} until {until:%Y-%m-%d %H:%M} UTC by {by}: {reason}", markup=False)


@click.command()
@click.option("--tenant", required=True, help="Tenant whose ad hoc freezes to lift.", shell_complete=complete.tenants)
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who lifts them.")
@run_async
async def unfreeze(tenant: str, by: str) -> None:
    """Lift a tenant's ad hoc freezes now; deploys waiting for them go ahead (recurring windows stay: katkit.yaml)."""
    kk = await connect()
    lifted = await kk.unfreeze(tenant, by)
    out.print(f"unfrozen: {tenant} by {by} (lifted {len(lifted)} freeze(s))", markup=False)


@click.command()
@click.option("--tenant", help="Only this tenant.", shell_complete=complete.tenants)
@click.option("--json", "as_json", is_flag=True, help="Print the freezes as JSON.")
@run_async
async def freezes(tenant: str | None, as_json: bool) -> None:
    """List freezes: the ad hoc ones in force (who set them, why, until when) and each recurring window."""
    kk = await connect()
    found = await kk.freezes(tenant)
    if as_json:
        click.echo(json_text(found))
        return
    if not found:
        click.echo(f"no freezes{f' of {tenant}' if tenant else ''}")
        return
    table = [("TENANT", "KIND", "STATE", "UNTIL (UTC)", "SET BY", "REASON")]
    for f in found:
        if f.source == "adhoc":
            table.append((f.tenant, "ad hoc", "in force", f"{f.until:%Y-%m-%d %H:%M}",
                          f"{f.by} at {f.set_at:%Y-%m-%d %H:%M}" if f.set_at else f.by, f.reason or "-"))
        else:
            state = "in force" if f.in_force else f"next {f.next_start:%Y-%m-%d %H:%M}" if f.next_start else "-"
            table.append((f.tenant, f"window {f.window}", state, f"{f.until:%Y-%m-%d %H:%M}", "katkit.yaml",
                          f.reason or "-"))
    print_table(table)


COMMANDS = (freeze, unfreeze, freezes)
