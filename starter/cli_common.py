"""What every ``katkit`` command shares: the consoles, the connection, tables, the no-worker warning and how a
followed run that failed ends (the error, then the failing shard's last log lines)."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import click
from rich.console import Console

from katkit.config import load_config, load_settings
from katkit.errors import RunFailed
from katkit.models import RunStatus
from starter.api import Katkit, RunHandle
from starter.render import PhasePrinter, log_tail

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliState:
    """The group's options, for its commands: ``--config`` and ``--debug``."""

    config_path: str | None = None
    debug: bool = False


def run_async(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def connect(with_config: bool = True) -> Katkit:
    """Connect; with ``with_config`` katkit.yaml must load now, else only when a command needs it (filters)."""
    state = click.get_current_context().find_object(CliState)
    path = state.config_path if state is not None else None
    config = load_config(path) if with_config else None
    return await Katkit.connect(load_settings(), config, config_path=path)


def print_table(table: Sequence[tuple[str, ...]]) -> None:
    """Rows (the header first) in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


async def warn_without_worker(kk: Katkit) -> None:
    """After starting something: one line when no worker polls the task queue (it would wait in silence)."""
    note = await kk.worker_note()
    if note:
        err.print(f"katkit: warning: {note}", markup=False)


async def started(kk: Katkit, handle: RunHandle, what: str, wait: bool = False) -> RunStatus | None:
    """Say what started (or was running already) and warn when no worker polls; with ``wait``, follow the run."""
    out.print(f"{'already running' if handle.existing else 'started'}: {handle.run_id}{what}\n  {handle.url}", markup=False)
    await warn_without_worker(kk)
    return await wait_run(kk, handle.run_id) if wait else None


async def wait_run(kk: Katkit, run_id: str) -> RunStatus:
    """Follow a run, a line per phase change; if it fails, end with the failing shard's last log lines."""
    try:
        return await kk.wait(run_id, on_change=PhasePrinter(out))
    except RunFailed as exc:
        await fail_with_tail(kk, run_id, exc)


async def fail_with_tail(kk: Katkit, run_id: str | None, exc: RunFailed) -> NoReturn:
    """The error line, then the last log lines of each failed shard of ``run_id``; exit 1."""
    try:
        tails = await kk.failure_tail(run_id) if run_id else []
    except Exception:  # noqa: BLE001 - the tail is a courtesy: the failure itself is the news
        tails = []
    err.print(f"katkit: error: {exc}", markup=False)
    for label, lines in tails:
        for line in log_tail(run_id or "", label, lines):
            click.echo(line)
    sys.exit(exc.exit_code)
