"""The approval gate of a deployment phase: who may decide, the quorum, and the record of every decision.

Pure and deterministic (no I/O, time passed in), so the workflow stays thin and the rules are testable.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from katkit import proof
    from katkit.config import TenantConfig
    from katkit.models import ApprovalState, Decision, DecisionInput
    from katkit.states import Outcome

UNVERIFIED = "unverified"


class ApprovalGate:
    def __init__(self, tenant: TenantConfig, started_by: str, state: ApprovalState,
                 run_id: str = "", sha: str = "", execution: str = "") -> None:
        self.policy = tenant.approval
        self.tenant = tenant.name
        self.started_by = started_by
        self.state = state
        self.run_id, self.sha, self.execution = run_id, sha, execution  # what a signed decision must be signed for

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

    def verification(self, kind: str, inp: DecisionInput, now: datetime) -> tuple[str, str]:
        """What proves the decision is ``inp.by``'s ('ssh key SHA256:...' or 'unverified'), or why it is refused.

        Pure and deterministic: the signature is checked against the keys in the run's own config snapshot, and its
        age against ``now`` (workflow time). A proof that does not hold is always refused; no proof is refused only
        under ``require_proof``."""
        if inp.proof is None:
            if self.policy.require_proof:
                return UNVERIFIED, (f"tenant {self.tenant} requires a signed decision (require_proof) and this one is "
                                    f"unsigned; sign it: katkit {kind} {self.run_id} --by {inp.by or '<you>'} "
                                    "--key ~/.ssh/id_ed25519")
            return UNVERIFIED, ""
        identity, login = self.policy.identity(inp.by), inp.proof.github
        if login:  # a GitHub comment, vouched for by katkit webhook's key
            if identity is None or (identity.github or "").lower() != login.lower():
                return UNVERIFIED, f"GitHub user {login} is not {inp.by} (tenant {self.tenant} lists no such github login)"
            if not self.policy.webhook_key:
                return UNVERIFIED, f"tenant {self.tenant} takes no decisions from GitHub comments (no approval.webhook_key)"
            keys, what = [self.policy.webhook_key], f"github {identity.github}"
        elif identity is None or not identity.keys:
            return UNVERIFIED, f"the decision is signed, but tenant {self.tenant} declares no keys for {inp.by}"
        else:
            keys, what = identity.keys, ""
        signed_at = inp.proof.signed_at
        if signed_at.tzinfo is None:
            return UNVERIFIED, "the proof's signed_at has no time zone"
        if now - signed_at > proof.MAX_AGE:
            return UNVERIFIED, (f"the signature is too old (signed {proof.utc_text(signed_at)}, more than "
                                f"{proof.MAX_AGE.total_seconds() / 60:.0f} minutes before the run received it): "
                                "a replayed signature? sign again")
        if signed_at - now > proof.MAX_AHEAD:
            return UNVERIFIED, f"the signature is dated in the future ({proof.utc_text(signed_at)}); check the signer's clock"
        message = proof.decision_message(run_id=self.run_id, execution=self.execution, sha=self.sha, tenant=self.tenant,
                                         kind=kind, by=inp.by,
                                         text=self.text_of(kind, inp), signed_at=signed_at, github=login)
        try:
            fp = proof.verify(inp.proof.signature, message, keys)
            return what or f"ssh key {fp}", ""
        except proof.ProofError as exc:
            return UNVERIFIED, f"the signature proves nothing: {exc}".replace("not one of theirs", f"not one of {inp.by}'s")

    @staticmethod
    def text_of(kind: str, inp: DecisionInput) -> str:
        return inp.comment if kind == "approve" else (inp.reason or inp.comment)

    def decide(self, kind: str, inp: DecisionInput, now: datetime, run_status: str) -> Decision:
        """Record a decision (refused ones too) and move the gate when it is accepted."""
        text = self.text_of(kind, inp)
        refused = self.refusal(kind, inp.by, run_status)
        verified_by, unproven = self.verification(kind, inp, now)
        refused = refused or unproven
        decision = Decision(kind=kind, by=inp.by, at=now, text=text,  # type: ignore[arg-type]
                            accepted=not refused, refused_because=refused, verified_by=verified_by)
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
        decision = Decision(kind="timeout", by="timeout", at=now, verified_by="",
                            text=f"no decision within {self.policy.timeout}; on_timeout is {self.policy.on_timeout}")
        self.state.decisions.append(decision)
        self.state.outcome = Outcome.TIMED_OUT
        return decision
