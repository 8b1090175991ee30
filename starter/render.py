"""How runs look on a terminal: phase transitions as lines (they read well live and in CI logs) and tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from katkit.models import PhaseState, PhaseType, RunStatus, ShardState
from katkit.states import State

STYLE = {State.SUCCEEDED: "green", State.FAILED: "red", State.REJECTED: "red", State.CANCELLED: "yellow",
         State.RUNNING: "cyan", State.AWAITING_APPROVAL: "magenta", State.WAIT_TIMER: "magenta",
         State.DEPLOYING: "cyan", State.SKIPPED: "dim", State.PENDING: "dim", State.TERMINATED: "red"}
"""Every state's colour: a new state in ``katkit.states`` gets one here."""


def _duration(p: PhaseState) -> str:
    if p.started_at and p.ended_at:
        return f"{(p.ended_at - p.started_at).total_seconds():.1f} s"
    return ""


class PhasePrinter:
    """Prints each phase's state once, when it changes."""

    def __init__(self, console: Console, indent: str = "  ") -> None:
        self.console, self.indent = console, indent
        self._seen: dict[str, State] = {}
        self._note = ""

    def __call__(self, st: RunStatus) -> None:
        if st.note != self._note:  # e.g. no worker polls: say so instead of printing nothing
            self._note = st.note
            if st.note:
                self.console.print(f"{self.indent}[yellow]waiting: {st.note}[/]", highlight=False)
        for p in st.phases:
            if self._seen.get(p.name) == p.state:
                continue
            self._seen[p.name] = p.state
            if p.state == State.PENDING:
                continue
            detail = _duration(p)
            if p.state == State.RUNNING and p.parallelism > 1:
                detail = f"{p.parallelism} shards"
            if p.state == State.AWAITING_APPROVAL:
                who = ", ".join(st.approval.approvers) or "anyone"
                detail = f"waiting for a decision from {who}"
            if p.state == State.WAIT_TIMER and st.approval.deploy_not_before:
                detail = f"no deploy before {st.approval.deploy_not_before:%H:%M:%S} UTC"
            if p.message and p.state not in (State.RUNNING, State.SUCCEEDED):
                detail = f"{detail}  {p.message}".strip()
            elif p.state == State.SUCCEEDED and p.message:
                detail = f"{detail}  {p.message}"
            style = STYLE.get(p.state, "")
            self.console.print(f"{self.indent}{p.name:<14} [{style}]{p.state:<18}[/{style}] {detail}".rstrip(),
                               highlight=False)


def _shard(s: ShardState) -> str:
    """``#1: failed (exit 3)``, ``#2: cancelled (another shard failed)``."""
    why = f"exit {s.exit_code}" if s.exit_code is not None else s.message
    return f"#{s.index}: {s.state}" + (f" ({why})" if why else "")


def status_table(st: RunStatus, url: str) -> Table:
    table = Table(title=f"{st.run_id}  [{STYLE.get(st.status, '')}]{st.status}[/]", title_justify="left",
                  caption=f"{st.repo}@{st.sha[:12]} -> {st.tenant} ({st.env}), started by {st.started_by}  {url}",
                  caption_justify="left")
    for col in ("phase", "type", "state", "took", "shards / detail"):
        table.add_column(col)
    for p in st.phases:
        if p.type == PhaseType.EXECUTION:
            detail = ", ".join(_shard(s) for s in p.shards)
        else:
            detail = p.message or (f"{len(st.approval.decisions)} decision(s)" if st.approval.decisions else "")
        table.add_row(p.name, p.type, f"[{STYLE.get(p.state, '')}]{p.state}[/]", _duration(p), detail)
    for d in st.approval.decisions:
        verdict = "accepted" if d.accepted else f"refused: {d.refused_because}"
        table.add_row("", "decision", d.kind, d.at.strftime("%H:%M:%S"), f"{d.by}: {d.text} ({verdict})".strip())
    return table
