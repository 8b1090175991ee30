"""The one place where katkit's errors become Temporal failures: ``BadInput`` is final (``non_retryable``),
``InfraError`` is retried by the activity's retry policy. Every activity that can raise them is wrapped."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from temporalio.exceptions import ApplicationError

from katkit.errors import BadInput, InfraError
from katkit.states import ErrorType

F = TypeVar("F", bound=Callable[..., Any])


def as_failure(exc: BadInput | InfraError) -> ApplicationError:
    """The ApplicationError for a katkit error: its one line is the message the user sees."""
    if isinstance(exc, BadInput):
        return ApplicationError(str(exc), type=ErrorType.BAD_INPUT, non_retryable=True)
    return ApplicationError(str(exc), type=ErrorType.INFRA)


def translate_errors(fn: F) -> F:
    """Wrap a sync or async activity so that katkit errors leave it as ``as_failure`` says."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (BadInput, InfraError) as exc:
                raise as_failure(exc) from (None if isinstance(exc, BadInput) else exc)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BadInput, InfraError) as exc:
            raise as_failure(exc) from (None if isinstance(exc, BadInput) else exc)

    return cast(F, wrapper)
