"""boto3 clients for katkit, from boto3's standard credential chain only (env, profile, instance/task role).

Every AWS client katkit uses comes from :func:`client`, so the calls it makes can be observed in one place
(the IAM policy test does). Credentials never pass through katkit's inputs, history or logs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from katkit.errors import InfraError

_lock = threading.Lock()
_clients: dict[tuple[str, str | None], Any] = {}
P = ParamSpec("P")
R = TypeVar("R")


def client(service: str, region: str | None = None) -> Any:
    """One thread-safe boto3 client per service and region (AWS_ENDPOINT_URL and friends apply)."""
    with _lock:
        found = _clients.get((service, region))
        if found is None:
            import boto3
            from botocore.config import Config

            found = boto3.client(service, region_name=region,
                                 config=Config(retries={"mode": "standard", "max_attempts": 5}))
            _clients[(service, region)] = found
        return found


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and credentials)."""
    with _lock:
        _clients.clear()


def aws_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """botocore errors -> InfraError (retried) with one line; callers turn the ones that are bad input into BadInput."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise InfraError(f"AWS {exc.operation_name} failed: {err.get('Code')}: {err.get('Message', '')[:200]}") from exc
        except BotoCoreError as exc:
            raise InfraError(f"AWS call failed: {str(exc)[:200]}") from exc

    return wrapper
