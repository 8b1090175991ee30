"""``katkit audit RUN``: one run's decision trail, from its Temporal history, checked against the run's status."""

from __future__ import annotations

import sys

import click

from starter import complete
from starter.cli_common import connect, err, run_async
from starter.render import json_text


@click.command()
@click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
@click.option("--json", "as_json", is_flag=True, help="Print the trail as JSON.")
@run_async
async def audit(run_id: str, as_json: bool) -> None:
    """One run's full decision trail from its Temporal history: who started it, every decision (accepted or refused,
    and why), every wait, what was deployed; checked against the run's status (exit 1 if they disagree)."""
    kk = await connect(with_config=False)
    trail = await kk.audit(run_id)
    if as_json:
        click.echo(json_text(trail.model_dump(mode="json")))
    else:
        click.echo(f"audit of {trail.run_id}: {trail.status}")
        for e in trail.entries:
            click.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.what:<9} {e.text}")
        if trail.consistent:
            click.echo("checked against the run's own status: the trail agrees")
    if trail.note:
        err.print(f"katkit: error: the trail could not be checked against the run's status: {trail.note}", markup=False)
        sys.exit(1)
    for d in trail.disagreements:
        err.print(f"katkit: error: the trail disagrees with the run's status: {d}", markup=False)
    if trail.disagreements:
        sys.exit(1)


COMMANDS = (audit,)
