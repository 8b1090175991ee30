"""What the workflows ask of activities: retry policies and timeouts, and the one line a failed activity says."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from katkit.states import ErrorType

INFRA_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[ErrorType.BAD_INPUT],
)
"""Infrastructure faults are retried with backoff; bad input never is."""
CHECKOUT_TIMEOUT = timedelta(minutes=10)
SHARD_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
SHARD_TIMEOUT_MARGIN = timedelta(minutes=5)
DEPLOY_TIMEOUT = timedelta(minutes=30)
DEPLOY_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
CLEANUP_TIMEOUT = timedelta(minutes=2)
PREPARE_TIMEOUT = timedelta(minutes=2)  # a checkout or a container create; a prepare that fails is only not used
PREPARE_RETRY = RetryPolicy(maximum_attempts=1)  # a prepare that failed is only not used: never two at once
PICK_HOST_TIMEOUT = timedelta(seconds=30)
PING_TIMEOUT = timedelta(seconds=30)  # a live host answers a ping at once, however busy


def failure_text(exc: BaseException) -> str:
    """The one line a failed activity says (its cause's message), else the exception's own."""
    if isinstance(exc, ActivityError) and isinstance(exc.cause, FailureError):
        return exc.cause.message
    return str(exc)


def is_error(exc: BaseException, kind: ErrorType) -> bool:
    """Whether an activity failed with katkit's error type ``kind`` (e.g. Superseded)."""
    return isinstance(exc, ActivityError) and isinstance(exc.cause, ApplicationError) and exc.cause.type == kind
