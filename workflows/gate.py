"""The approval gate of a deployment phase: who may decide, the quorum, and the record of every decision.

Pure and deterministic (no I/O, time passed in), so the workflow stays thin and the rules are testable.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from katkit.config import TenantConfig
    from katkit.models import ApprovalState, Decision, DecisionInput
    from katkit.states import Outcome


class ApprovalGate:
    def __init__(self, tenant: TenantConfig, started_by: str, state: ApprovalState) -> None:
        self.policy = tenant.approval
        self.tenant = tenant.name
        self.started_by = started_by
        self.state = state

    @property
    def decided(self) -> bool:
        return bool(self.state.outcome)

    def refusal(self, kind: str, by: str, run_status: str) -> str:
        """Why ``by`` may not make this decision now, or '' when they may."""
        policy = self.policy
        if not by.strip():
            return "the decision has no 'by'; send {\"by\": \"<user>\", ...}"
        if self.decided:
            last = next((d for d in reversed(self.state.decisions) if d.accepted), None)
            return f"the gate was already decided ({self.state.outcome}{f' by {last.by}' if last else ''})"
        if not self.state.awaiting:
            return f"the run is not waiting for approval (status {run_status})"
        if policy.approvers and by not in policy.approvers:
            return f"{by} is not an approver of tenant {self.tenant} (approvers: {', '.join(policy.approvers)})"
        if kind == "approve" and by == self.started_by and not policy.allow_self_approval:
            return f"{by} started this run and tenant {self.tenant} does not allow self-approval"
        if kind == "approve" and by in self.state.approved_by:
            return f"{by} has approved already ({len(self.state.approved_by)} of {policy.min_approvals} approvals)"
        return ""

    def decide(self, kind: str, inp: DecisionInput, now: datetime, run_status: str) -> Decision:
        """Record a decision (refused ones too) and move the gate when it is accepted."""
        text = inp.comment if kind == "approve" else (inp.reason or inp.comment)
        refused = self.refusal(kind, inp.by, run_status)
        decision = Decision(kind=kind, by=inp.by, at=now, text=text,  # type: ignore[arg-type]
                            accepted=not refused, refused_because=refused)
        self.state.decisions.append(decision)
        if refused:
            return decision
        if kind == "reject":
            self.state.outcome = Outcome.REJECTED
        else:
            self.state.approved_by.append(inp.by)
            if len(self.state.approved_by) >= self.policy.min_approvals:
                self.state.outcome = Outcome.APPROVED
        return decision

    def time_out(self, now: datetime) -> Decision:
        decision = Decision(kind="timeout", by="timeout", at=now,
                            text=f"no decision within {self.policy.timeout}; on_timeout is {self.policy.on_timeout}")
        self.state.decisions.append(decision)
        self.state.outcome = Outcome.TIMED_OUT
        return decision
