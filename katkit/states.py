"""Every state a run, phase, shard or promotion step can be in, and every error type katkit puts on a Temporal
failure: one module, so that adding a state is a change here plus its rendering (``starter/render.py``).

The values are the strings users see in ``katkit status``, the ``KatkitStatus`` search attribute, webhooks
and recorded histories: never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """The state of a run (``RunStatus.status``), a phase, a shard or a promotion step."""

    PENDING = "pending"  # phase, shard, step: not started yet
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"  # run and deployment phase: the gate is open
    WAIT_TIMER = "wait_timer"  # deployment phase: approved, soaking until the tenant's wait timer has passed
    FROZEN = "frozen"  # run and deployment phase: the tenant is in a freeze window; the deploy waits for its end
    DEPLOYING = "deploying"  # run and deployment phase
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # the gate said no (or timed out with on_timeout: reject)
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # phase, step: never ran because an earlier one ended the run
    TERMINATED = "terminated"  # run: ended by the server (``temporal workflow terminate``), no katkit code ran


TERMINAL: tuple[State, ...] = (State.SUCCEEDED, State.FAILED, State.REJECTED, State.CANCELLED)
"""How a run ends."""

ENDED: tuple[State, ...] = (*TERMINAL, State.TERMINATED)
"""A run in one of these has ended, by its own doing or the server's."""

RUN_STATES: tuple[State, ...] = (State.RUNNING, State.AWAITING_APPROVAL, State.FROZEN, State.DEPLOYING, *TERMINAL)
"""Every value of ``KatkitStatus`` on a CommitRun (what ``katkit list --status`` filters on)."""

LIVE: tuple[State, ...] = (State.RUNNING, State.AWAITING_APPROVAL, State.FROZEN, State.DEPLOYING)
"""A run in one of these has not ended (``katkit status`` exits 0 for them)."""


def run_state_of(phase_state: State) -> State:
    """The run's state while a phase is in ``phase_state``: the gate, a freeze and the deploy show; all else is
    running."""
    return phase_state if phase_state in (State.AWAITING_APPROVAL, State.FROZEN, State.DEPLOYING) else State.RUNNING


class Outcome(StrEnum):
    """How an approval gate was decided (``ApprovalState.outcome``; '' while undecided)."""

    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


class DeployKind(StrEnum):
    """What a deployment phase does (``DeployInput.kind``, ``DeploymentRecord.kind``)."""

    DEPLOY = "deploy"  # the run's sha: servicedescription.js's image with the sha for <hubtag>
    ROLLBACK = "rollback"  # an image from the service's ledger
    AUTO_ROLLBACK = "auto_rollback"  # katkit put the previous image back: a phase after the deploy failed


class ErrorType(StrEnum):
    """``ApplicationError.type`` of the failures katkit raises (what retry policies and callers match on)."""

    BAD_INPUT = "BadInput"  # never retried: input that will never work as given
    INFRA = "InfraError"  # retried: something katkit depends on failed
    SUPERSEDED = "Superseded"  # a newer run took the deploy lock (policy supersede): this run is cancelled
    RUN_FAILED = "RunFailed"  # a CommitRun's failure; its details hold the RunStatus
    PROMOTION_FAILED = "PromotionFailed"  # a Promotion's failure; its details hold the PromotionStatus
    WEBHOOK_FAILED = "WebhookFailed"  # a webhook did not take an event (retried a little, never fails a run)
