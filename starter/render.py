"""How runs look on a terminal: phase transitions as lines (they read well live and in CI logs) and tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from katkit.models import PhaseState, RunStatus

STYLE = {"succeeded": "green", "failed": "red", "rejected": "red", "cancelled": "yellow", "running": "cyan",
         "awaiting_approval": "magenta", "deploying": "cyan", "skipped": "dim", "pending": "dim"}


def _duration(p: PhaseState) -> str:
    if p.started_at and p.ended_at:
        return f"{(p.ended_at - p.started_at).total_seconds():.1f} s"
    return ""


class PhasePrinter:
    """Prints each phase's state once, when it changes."""

    def __init__(self, console: Console, indent: str = "  ") -> None:
        self.console, self.indent = console, indent
        self._seen: dict[str, str] = {}
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
            if p.state == "pending":
                continue
            detail = _duration(p)
            if p.state == "running" and p.parallelism > 1:
                detail = f"{p.parallelism} shards"
            if p.state == "awaiting_approval":
                who = ", ".join(st.approval.approvers) or "anyone"
                detail = f"waiting for a decision from {who}"
            if p.message and p.state not in ("running", "succeeded"):
                detail = f"{detail}  {p.message}".strip()
            elif p.state == "succeeded" and p.message:
                detail = f"{detail}  {p.message}"
            style = STYLE.get(p.state, "")
            self.console.print(f"{self.indent}{p.name:<14} [{style}]{p.state:<18}[/{style}] {detail}".rstrip(),
                               highlight=False)


def status_table(st: RunStatus, url: str) -> Table:
    table = Table(title=f"{st.run_id}  [{STYLE.get(st.status, '')}]{st.status}[/]", title_justify="left",
                  caption=f"{st.repo}@{st.sha[:12]} -> {st.tenant} ({st.env}), started by {st.started_by}  {url}",
                  caption_justify="left")
    for col in ("phase", "type", "state", "took", "shards / detail"):
        table.add_column(col)
    for p in st.phases:
        if p.type == "execution":
            detail = ", ".join(f"#{s.index}: {s.state}" + (f" (exit {s.exit_code})" if s.exit_code is not None else "")
                               for s in p.shards)
        else:
            detail = p.message or (f"{len(st.approval.decisions)} decision(s)" if st.approval.decisions else "")
        table.add_row(p.name, p.type, f"[{STYLE.get(p.state, '')}]{p.state}[/]", _duration(p), detail)
    for d in st.approval.decisions:
        verdict = "accepted" if d.accepted else f"refused: {d.refused_because}"
        table.add_row("", "decision", d.kind, d.at.strftime("%H:%M:%S"), f"{d.by}: {d.text} ({verdict})".strip())
    return table
