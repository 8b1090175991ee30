"""How runs look on a terminal: phase transitions as lines (they read well live and in CI logs), tables, the gate's
"who decides and how", a failed shard's log tail and JSON. Shards are numbered from 1 here as everywhere katkit talks
to people (``#2``, ``UNIT_TEST#2``, ``shard 2/3``); only ci.sh's ``KATKIT_SHARD_INDEX`` is 0-based."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.table import Table

from katkit.config import ApprovalPolicy
from katkit.models import ApprovalState, PhaseState, PhaseType, PromotionStatus, PromotionStep, RunStatus, ShardState
from katkit.states import Outcome, State

STYLE = {State.SUCCEEDED: "green", State.FAILED: "red", State.REJECTED: "red", State.CANCELLED: "yellow",
         State.RUNNING: "cyan", State.AWAITING_APPROVAL: "magenta", State.WAIT_TIMER: "magenta", State.FROZEN: "blue",
         State.DEPLOYING: "cyan", State.SKIPPED: "dim", State.PENDING: "dim", State.TERMINATED: "red"}
"""Every state's colour: a new state in ``katkit.states`` gets one here."""


def _took(p: PhaseState, now: datetime | None = None) -> str:
    """How long the phase took; given ``now``, also how long a phase that has not ended has run so far (``12.3 s…``)."""
    if p.started_at and p.ended_at:
        return f"{(p.ended_at - p.started_at).total_seconds():.1f} s"
    if now is not None and p.started_at and p.state not in (State.PENDING, State.SKIPPED):
        started = p.started_at if p.started_at.tzinfo else p.started_at.replace(tzinfo=timezone.utc)
        return f"{max(0.0, (now - started).total_seconds()):.1f} s…"
    return ""


def how_to_decide(target: str, gate: ApprovalState | ApprovalPolicy, started_by: str) -> list[str]:
    """The commands that decide a gate that is open now, and who may give them."""
    who = ", ".join(gate.approvers) if gate.approvers else "anyone"
    need = f"{gate.min_approvals} approval{'s' if gate.min_approvals > 1 else ''} from {who}"
    if not gate.allow_self_approval and (not gate.approvers or started_by in gate.approvers):
        need += f", not {started_by} who started it"
    prog = os.environ.get("KATKIT_PROG") or "katkit"  # as the user called it (./dev.sh says so)
    key = " --key ~/.ssh/id_ed25519" if gate.require_proof else ""  # signed, or refused
    return [f"approve: {prog} approve {target} --by <you>{key}  ({need})",
            f"reject:  {prog} reject {target} --by <you>{key} --reason TEXT"]


class PhasePrinter:
    """Prints each phase's state once, when it changes; at the gate, how to decide, each decision and who approved."""

    def __init__(self, console: Console, indent: str = "  ") -> None:
        self.console, self.indent = console, indent
        self._seen: dict[str, State] = {}
        self._note = ""
        self._decisions = 0
        self._outcome = ""

    def _line(self, phase: str, text: str) -> None:
        self.console.print(f"{self.indent}{phase:<14} {text}".rstrip(), highlight=False)

    def __call__(self, st: RunStatus) -> None:
        if st.note != self._note:  # e.g. no worker polls: say so instead of printing nothing
            self._note = st.note
            if st.note:
                self.console.print(f"{self.indent}[yellow]waiting: {st.note}[/]", highlight=False)
        for p in st.phases:
            if p.type == PhaseType.DEPLOYMENT:
                self._gate_news(p, st)
            if self._seen.get(p.name) == p.state:
                continue
            self._seen[p.name] = p.state
            if p.state == State.PENDING:
                continue
            detail = _took(p)
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
            self._line(p.name, f"[{style}]{p.state:<18}[/{style}] {detail}")
            if p.state == State.AWAITING_APPROVAL:
                for line in how_to_decide(st.run_id, st.approval, st.started_by):
                    self._line("", line)

    def _gate_news(self, p: PhaseState, st: RunStatus) -> None:
        """Decisions since the last look (refused ones, and each approval of a quorum), then who approved."""
        approval = st.approval
        approvals = 0
        for i, d in enumerate(approval.decisions):
            approvals += d.kind == "approve" and d.accepted
            if i < self._decisions:
                continue
            if not d.accepted:
                self._line(p.name, f"{d.kind} by {d.by} refused: {d.refused_because}")
            elif d.kind == "approve" and approval.min_approvals > 1:
                self._line(p.name, f"approve by {d.by} accepted ({approvals} of {approval.min_approvals}), "
                                   f"{d.verification}" + (f": {d.text}" if d.text else ""))
            elif d.verification.startswith("verified"):
                self._line(p.name, f"{d.kind} by {d.by} {d.verification}")
        self._decisions = len(approval.decisions)
        if approval.outcome != self._outcome:
            self._outcome = approval.outcome
            if approval.outcome == Outcome.APPROVED:
                self._line(p.name, f"approved by {', '.join(approval.approved_by)}")


def _shard(s: ShardState) -> str:
    """``#1: failed (exit 3)``, ``#2: cancelled (another shard failed)``."""
    why = f"exit {s.exit_code}" if s.exit_code is not None else s.message
    return f"#{s.index + 1}: {s.state}" + (f" ({why})" if why else "")


def status_table(st: RunStatus, url: str) -> Table:
    attempt = f"  attempt {st.attempt}" if st.attempt > 1 else ""
    table = Table(title=f"{st.run_id}{attempt}  [{STYLE.get(st.status, '')}]{st.status}[/]", title_justify="left",
                  caption=f"{st.repo}@{st.sha[:12]} -> {st.tenant} ({st.env}), started by {st.started_by}  {url}",
                  caption_justify="left")
    for col in ("phase", "type", "state", "took", "shards / detail"):
        table.add_column(col)
    now = datetime.now(timezone.utc)
    for p in st.phases:
        if p.type == PhaseType.EXECUTION:
            detail = ", ".join(_shard(s) for s in p.shards)
            if p.reused_from:  # a retry took it as an earlier attempt left it; its logs are that attempt's
                detail = f"reused from attempt {p.reused_from}: {detail}"
        else:
            detail = p.message or (f"{len(st.approval.decisions)} decision(s)" if st.approval.decisions else "")
        table.add_row(p.name, p.type, f"[{STYLE.get(p.state, '')}]{p.state}[/]", _took(p, now), detail)
    for d in st.approval.decisions:
        verdict = "accepted" if d.accepted else f"refused: {d.refused_because}"
        proof = f", {d.verification}" if d.verification else ""
        table.add_row("", "decision", d.kind, d.at.strftime("%H:%M:%S"), f"{d.by}: {d.text} ({verdict}{proof})".strip())
    return table


def shard_ending(s: ShardState) -> str:
    """How a shard ended, for the line that ends its followed log: ``ci.sh exited 3 in 4.1 s``."""
    if s.exit_code is not None:
        took = f" in {s.duration_s:.1f} s" if s.duration_s is not None else ""
        return f"ci.sh exited {s.exit_code}{took}"
    return f"{s.state} ({s.message})" if s.message else str(s.state)


def log_tail(run_id: str, label: str, lines: Sequence[str]) -> list[str]:
    """A failed shard's last log lines as ``katkit logs`` prints them, under the command that prints all of it."""
    phase, _, shard = label.partition("#")
    every = f"katkit logs {run_id} --phase {phase}" + (f" --shard {shard}" if shard else "")
    return [f"last {len(lines)} log lines of {label} (all of it: {every}):", *(f"{label}| {line}" for line in lines)]


def step_line(step: PromotionStep) -> str:
    return f"  {step.tenant:<18} {step.status:<18} {step.run_id}  {step.error or step.image}".rstrip()


class PromotionPrinter:
    """Prints each step of a promotion once per state; when a step's gate opens, how to decide (``gate_of(tenant)``:
    the tenant's approval policy, when known)."""

    def __init__(self, console: Console, gate_of: Callable[[str], ApprovalPolicy | None]) -> None:
        self.console, self.gate_of = console, gate_of
        self._seen: dict[str, str] = {}
        self._note = ""

    def __call__(self, st: PromotionStatus) -> None:
        if st.note != self._note:
            self._note = st.note
            if st.note:
                self.console.print(f"  [yellow]waiting: {st.note}[/]", highlight=False)
        for step in st.steps:
            if self._seen.get(step.tenant) == step.status:
                continue
            self._seen[step.tenant] = step.status
            self.console.print(step_line(step), highlight=False, markup=False)
            gate = self.gate_of(step.tenant)
            if step.status == State.AWAITING_APPROVAL and gate is not None:
                for line in how_to_decide(st.promotion_id, gate, st.started_by):
                    self.console.print(f"{'':<21}{line}", highlight=False, markup=False)


def promotion_lines(st: PromotionStatus) -> list[str]:
    return [f"{st.promotion_id}  {st.status}  ({st.repo}@{st.sha[:12]}, by {st.started_by})",
            *(step_line(step) for step in st.steps)]


def json_text(value: object) -> str:
    """``--json`` output: times in ISO 8601 with their zone (``2026-11-23T07:17:32+00:00``; UTC when one has none)."""

    def default(o: object) -> object:
        if isinstance(o, datetime):
            return (o if o.tzinfo else o.replace(tzinfo=timezone.utc)).isoformat()
        if isinstance(o, BaseModel):
            return o.model_dump()  # its times come back here
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        return to_jsonable_python(o)

    return json.dumps(value, indent=2, default=default)
