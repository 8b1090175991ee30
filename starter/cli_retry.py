"""``katkit retry RUN [--from PHASE]``: the next attempt of an ended run, reusing the phases that succeeded."""

from __future__ import annotations

import getpass

import click

from starter import complete
from starter.cli_common import connect, out, run_async, started


@click.command()
@click.argument("run_id", metavar="RUN", shell_complete=complete.runs)
@click.option("--from", "from_phase", metavar="PHASE", help="Run again from this phase (default: the one that failed); "
                                                          "it may not come after the failed phase.")
@click.option("--fresh-config", is_flag=True, help="Use katkit.yaml as it is now (default: the run's own config snapshot).")
@click.option("--by", default=getpass.getuser, show_default="your OS user", help="Who starts the retry.")
@click.option("--wait", is_flag=True, help="Follow the new attempt until it ends; exit 1 if it fails.")
@run_async
async def retry(run_id: str, from_phase: str | None, fresh_config: bool, by: str, wait: bool) -> None:
    """Start a new attempt of an ended run: the same tenant, repository, sha and config; the execution phases that
    succeeded before the failed one (or PHASE) are reused, never a deploy."""
    kk = await connect(with_config=fresh_config)
    inp = await kk.prepare_retry(run_id, from_phase, fresh_config, by)
    handle = await kk.start_prepared(inp, run_id=run_id)
    spec = inp.retry
    reused = [f"{p.name} (from attempt {p.reused_from or spec.from_attempt})" for p in spec.reuse] if spec else []
    what = (f"  (attempt {inp.attempt} from {spec.from_phase if spec else 'the start'}; "
            f"reused: {', '.join(reused) or 'nothing'})")
    done = await started(kk, handle, what, wait)
    if done is not None:
        out.print(f"[green]succeeded[/]: {done.deployed.image if done.deployed else 'no deployment phase'}")


COMMANDS = (retry,)
