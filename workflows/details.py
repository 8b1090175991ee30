"""A run's page in the Temporal web UI: the markdown its "current details" show, kept up to date by the run.

Pure functions of the run's status (no I/O, deterministic), so what the page says is what ``katkit status``
says: the phases and shards, who must approve and exactly how, every decision, the failing shard's last log
lines, the deployed image, the promotion it belongs to.
"""

from __future__ import annotations

import json
import urllib.parse

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from katkit.models import LockState, PhaseState, PhaseType, PromotionStatus, RunStatus, ShardState
    from katkit.names import SIGNAL_APPROVE, SIGNAL_REJECT
    from katkit.states import State

MAX_SHARD_CELLS = 8  # a wider phase is summed up by state; its failed shards are still named
ICON = {State.SUCCEEDED: "✔", State.FAILED: "✘", State.REJECTED: "✘", State.TERMINATED: "✘", State.FROZEN: "❄"}
"""A mark for the states to spot at a glance (plain symbols: every font has them)."""


def _marked(state: State) -> str:
    return f"{ICON[state]} {state}" if state in ICON else str(state)


def workflow_link(namespace: str, workflow_id: str) -> str:
    """A markdown link to a workflow's page in the web UI (relative: the same UI the reader is on)."""
    return f"[{workflow_id}](/namespaces/{namespace}/workflows/{urllib.parse.quote(workflow_id, safe='')})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _took(p: PhaseState) -> str:
    if p.started_at and p.ended_at:
        return f"{(p.ended_at - p.started_at).total_seconds():.1f} s"
    return f"since {p.started_at:%H:%M:%S} UTC" if p.started_at else ""


def _shard(s: ShardState, count: int) -> str:
    text = f"shard {s.index + 1}/{count}: {s.state}"
    if s.exit_code is not None:
        text += f", exit {s.exit_code}"
    if s.duration_s is not None:
        text += f", {s.duration_s:.1f} s"
    return text + (f" ({s.message})" if s.message else "")


def _shards(p: PhaseState) -> str:
    if len(p.shards) <= MAX_SHARD_CELLS:
        return "<br>".join(_shard(s, p.parallelism) for s in p.shards)
    counts: dict[str, int] = {}
    for s in p.shards:
        counts[s.state] = counts.get(s.state, 0) + 1
    failed = [f"{s.index + 1}" for s in p.shards if s.state == State.FAILED]
    text = f"{p.parallelism} shards: " + ", ".join(f"{n} {state}" for state, n in counts.items())
    return text + (f"; failed: shard {', '.join(failed[:20])}" if failed else "")


def _phase_detail(p: PhaseState) -> str:
    if p.type == PhaseType.EXECUTION:
        return _shards(p) + (f"<br>{p.message}" if p.message and p.state != State.SUCCEEDED else "")
    return p.message


def _gate(st: RunStatus) -> list[str]:
    a = st.approval
    who = ", ".join(a.approvers) or ("anyone" if a.allow_self_approval else f"anyone but {st.started_by}")
    lines = [f"**Awaiting approval by {who}** ({len(a.approved_by)} of {a.min_approvals} approvals"
             + (f"; so far {', '.join(a.approved_by)})" if a.approved_by else ")"),
             "",
             f"- In this page: **More Actions → Send a Signal**, signal name `{SIGNAL_APPROVE}`, input "
             f"`{json.dumps({'by': '<you>', 'comment': 'why'})}` (or `{SIGNAL_REJECT}` with "
             f"`{json.dumps({'by': '<you>', 'reason': 'why'})}`).",
             f"- From a terminal: `katkit approve {st.run_id} --by <you>` "
             f"(or `katkit reject {st.run_id} --by <you> --reason ...`).",
             "- A refused decision is listed under Decisions below (refresh the page)."]
    if a.require_proof:  # an unsigned signal from this page would be refused
        lines[2:4] = [f"- Decisions must be signed (require_proof): `katkit approve {st.run_id} --by <you> --key "
                      f"~/.ssh/id_ed25519` (or `katkit reject ... --reason ...`); an unsigned signal is refused."]
    return lines


def run_details(st: RunStatus, namespace: str, parent: str | None = None) -> str:
    """The markdown of a run's page."""
    head = f"### {_marked(st.status)}"
    head += f" · {st.phase}" if st.phase and st.status not in (State.SUCCEEDED,) else ""
    lines = [head, "",
             f"`{st.repo}@{st.sha[:12] or '-'}` → **{st.tenant}** ({st.env}) · started by {st.started_by}"
             + (f" · {st.ref}" if st.ref else "")]
    if parent:
        lines.append(f"Step of promotion {workflow_link(namespace, parent)}")
    if st.untrusted:
        lines.append("A pull request from a fork: its ci.sh gets no secrets and no GitHub token.")
    if st.phases:
        lines += ["", "| phase | state | took | shards / detail |", "| --- | --- | --- | --- |"]
        for p in st.phases:
            lines.append(f"| {_cell(p.name)} | {_marked(p.state)} | {_took(p)} | {_cell(_phase_detail(p))} |")
    if st.approval.awaiting:
        lines += [""] + _gate(st)
    elif st.freeze.frozen_until and any(p.state == State.FROZEN for p in st.phases):
        lines += ["", f"**Frozen**: the deploy waits until {st.freeze.frozen_until:%Y-%m-%d %H:%M:%S} UTC"
                      + (f" ({st.freeze.reason})" if st.freeze.reason else "")
                      + (f", set by {st.freeze.by}" if st.freeze.by else "") + ". An approver may deploy through it: "
                      f"`katkit approve {st.run_id} --by <you> --override-freeze --comment why`."]
    elif st.approval.deploy_not_before and any(p.state == State.WAIT_TIMER for p in st.phases):
        lines += ["", f"Approved; the wait timer holds the deploy until {st.approval.deploy_not_before:%Y-%m-%d %H:%M:%S} UTC."]
    if st.approval.decisions:
        lines += ["", "**Decisions**", ""]
        for d in st.approval.decisions:
            verdict = "accepted" if d.accepted else f"**refused**: {d.refused_because}"
            proof = f", {d.verification}" if d.verification else ""
            lines.append(f"- {d.kind} by **{d.by}** at {d.at:%Y-%m-%d %H:%M:%S} UTC{f' — {d.text}' if d.text else ''} "
                         f"({verdict}{proof})")
    for o in st.freeze.overrides:
        lines.append(f"- freeze overridden by **{o.by}** at {o.at:%Y-%m-%d %H:%M:%S} UTC{f' — {o.text}' if o.text else ''}")
    if st.error:
        lines += ["", f"**{st.status}:** {st.error}"]
        for p in st.phases:
            for s in p.shards:
                if s.log_tail:
                    fence = "~~~" if "```" in s.log_tail else "```"
                    lines += ["", f"Last log lines of {p.name} shard {s.index + 1}/{p.parallelism} "
                              f"(`katkit logs {st.run_id} --phase {p.name}`):", fence, s.log_tail, fence]
    if st.deployed:
        dep = st.deployed
        lines += ["", f"**Deployed** `{dep.image}` ({dep.replicas} replica(s))"
                  + (f", previously `{dep.previous_image}`" if dep.previous_image else "")]
    if st.rolled_back:
        back = st.rolled_back
        lines += ["", f"**Rolled back** by katkit to `{back.image}` ({back.replicas} replica(s)): a phase after the "
                      "deploy failed (the tenant's `on_post_deploy_failure: rollback`)"]
    return "\n".join(lines)


def promotion_details(st: PromotionStatus, namespace: str) -> str:
    """The markdown of a promotion's page: its steps, each linked to its run."""
    lines = [f"### {_marked(st.status)}" + (f" · {st.current}" if st.current else ""), "",
             f"`{st.repo}@{st.sha[:12]}` promoted by {st.started_by}", "",
             "| tenant | state | run | detail |", "| --- | --- | --- | --- |"]
    for step in st.steps:
        run = workflow_link(namespace, step.run_id) if step.status != State.PENDING else step.run_id
        lines.append(f"| {_cell(step.tenant)} | {_marked(step.status)} | {run} | "
                     f"{_cell(step.error or (f'deployed `{step.image}`' if step.image else ''))} |")
    return "\n".join(lines)


def lock_details(st: LockState, namespace: str) -> str:
    """The markdown of a DeployLock's page: the service's lock (holder, queue) and its ledger's last deployments."""
    holder = (f"held by {workflow_link(namespace, st.holder.run_id)} since {st.holder.since:%Y-%m-%d %H:%M:%S} UTC"
              if st.holder else "free")
    lines = [f"### {st.service} in {st.tenant}: {holder}", "",
             f"Policy `{st.policy}`; one deployment of this service at a time, in arrival order."]
    if st.waiters:
        lines += ["", "Waiting: " + ", ".join(workflow_link(namespace, w.run_id) for w in st.waiters)]
    if st.records:
        lines += ["", "| at (UTC) | kind | image | run | by |", "| --- | --- | --- | --- | --- |"]
        for r in reversed(st.records[-10:]):
            by = r.started_by + (f" (approved by {', '.join(r.approved_by)})" if r.approved_by else "")
            lines.append(f"| {r.at:%Y-%m-%d %H:%M:%S} | {r.kind} | `{_cell(r.image)}` | {workflow_link(namespace, r.run_id)} "
                         f"| {_cell(by)} |")
    return "\n".join(lines)
