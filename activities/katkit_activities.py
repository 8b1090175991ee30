"""The activities of a commit run, as methods on a class that holds its clients (so tests hand in fakes).

All are sync (git, docker-py, boto3 are sync SDKs) and run on the worker's thread pool. Errors are
translated at this boundary: bad input is a non-retryable ``BadInput`` ApplicationError; infrastructure
faults are retryable.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from katkit.builders import Builder, BuilderSpec, builder_for, builder_name
from katkit.config import TenantConfig
from katkit.errors import BAD_INPUT_TYPE, BadInput, InfraError
from katkit.gitrepo import RepoMirror, normalize_url
from katkit.logstore import LogStore
from katkit.models import (
    CheckoutInput,
    PhaseType,
    DeployInput,
    DeployResult,
    RemoveBuilderInput,
    RunPlan,
    ShardInput,
    ShardResult,
)
from katkit.names import log_key
from katkit.plan import read_plan
from katkit.platforms import DeploymentRecord, Platform, RunningService, get_platform

LOG_CHUNK = 1 << 20
POLL_S = 0.5  # how often the log is copied to the store while ci.sh runs; exits are seen at once
TIMED_OUT_EXIT = 124

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("katkit.activities")


def translate_errors(fn: F) -> F:
    """katkit errors -> ApplicationError: BadInput is final, InfraError is retried."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            raise ApplicationError(str(exc), type=BAD_INPUT_TYPE, non_retryable=True) from None
        except InfraError as exc:
            raise ApplicationError(str(exc), type="InfraError") from exc

    return wrapper  # type: ignore[return-value]


def contract_env(inp: ShardInput) -> dict[str, str]:
    """What ci.sh sees: the BuildParams, then the contract's KATKIT_* variables (which win)."""
    return {
        **inp.phase.build_params,
        "KATKIT_SHA": inp.sha,
        "KATKIT_PHASE": inp.phase.name,
        "KATKIT_ENV": inp.tenant.env,
        "KATKIT_TENANT": inp.tenant.name,
        "KATKIT_REPO": inp.link.repo,
        "KATKIT_BRANCH": inp.link.branch,
        "KATKIT_RUN_ID": inp.run_id,
        "KATKIT_SHARD_INDEX": str(inp.shard_index),
        "KATKIT_SHARD_COUNT": str(inp.phase.parallelism),
    }


class KatkitActivities:
    def __init__(
        self,
        home: Path,
        log_store: LogStore,
        mirror: RepoMirror | None = None,
        builders: Callable[[TenantConfig], Builder] | None = None,
        platforms: Callable[[TenantConfig], Platform] | None = None,
    ) -> None:
        self.home = home
        self.log_store = log_store
        self.mirror = mirror or RepoMirror(home / "git")
        self._builders = builders or (lambda t: builder_for(t, home))
        self._platforms = platforms or (lambda t: get_platform(t.platform, home))

    def all(self) -> list[Callable[..., Any]]:
        return [self.checkout, self.run_shard, self.remove_builder, self.deploy]

    @activity.defn(name="checkout")
    @translate_errors
    def checkout(self, inp: CheckoutInput) -> RunPlan:
        """Resolve the sha and read + validate the repository's files at it."""
        plan = read_plan(self.mirror, inp.link, inp.env, inp.sha)
        if inp.tenant is not None:  # every builder image must be there before any builder starts
            builder = self._builders(inp.tenant)
            for image in sorted({p.image or "" for p in plan.phases if p.type == PhaseType.EXECUTION}):
                builder.check_image(image or None)
        return plan

    @activity.defn(name="run_shard")
    @translate_errors
    def run_shard(self, inp: ShardInput) -> ShardResult:
        """Start (or re-attach to) the shard's builder, stream its log into the store, wait, remove it."""
        with structlog.contextvars.bound_contextvars(
            run_id=inp.run_id, tenant=inp.tenant.name, phase=inp.phase.name, shard=inp.shard_index
        ):
            return self._run_shard(inp)

    def _run_shard(self, inp: ShardInput) -> ShardResult:
        name = builder_name(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index)
        key = log_key(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index)
        builder = self._builders(inp.tenant)
        spec = BuilderSpec(
            name=name,
            labels={"katkit.run": inp.run_id, "katkit.tenant": inp.tenant.name, "katkit.repo": inp.link.repo,
                    "katkit.sha": inp.sha, "katkit.phase": inp.phase.name, "katkit.shard": str(inp.shard_index),
                    "katkit.execution": inp.attempt_key},
            repo_url=normalize_url(inp.link.url), sha=inp.sha, folder=inp.link.folder,
            env=contract_env(inp), image=inp.phase.image, local_fleet=inp.local_fleet,
            mirror_path=str(self.mirror.mirror_path(inp.link.url)),
        )
        started_at = datetime.now(timezone.utc)
        remove = True
        try:
            fresh = builder.start(spec)
            log.info("builder started" if fresh else "builder re-attached", builder=name)
            offset = self.log_store.size(key)
            deadline = inp.deadline.timestamp()
            while True:
                state = builder.state(name)
                offset = self._pump(builder, name, key, offset)
                if not state.running:
                    break
                if time.time() >= deadline:
                    timeout_s = inp.tenant.phase_timeout.total_seconds()
                    builder.remove(name)
                    self._note(key, f"phase timed out: ci.sh was killed after the phase timeout ({timeout_s:.0f} s)")
                    self.log_store.finish(key)
                    return ShardResult(builder=name, exit_code=TIMED_OUT_EXIT, log_key=key, started_at=started_at,
                                       ended_at=datetime.now(timezone.utc), reattached=not fresh,
                                       message=f"timed out after the phase timeout of {timeout_s:.0f} s")
                activity.heartbeat(offset)
                builder.wait(name, POLL_S)
            code = state.exit_code if state.exit_code is not None else -1
            message = state.reason or f"exited {code}"
            if state.exit_code is None:
                self._note(key, message)
            self.log_store.finish(key)
            log.info("shard finished", exit_code=code)
            return ShardResult(builder=name, exit_code=code, log_key=key, started_at=started_at,
                               ended_at=datetime.now(timezone.utc), reattached=not fresh, message=message)
        except CancelledError:
            if activity.is_worker_shutdown():
                remove = False  # the worker stops, the run does not: the next worker re-attaches
            else:
                with activity.shield_thread_cancel_exception():
                    self._note(key, "cancelled: the builder was stopped")
                    self.log_store.finish(key)
            raise
        except ApplicationError:
            raise
        except BaseException:
            remove = False  # a retry re-attaches; the workflow removes the builder if retries run out
            raise
        finally:
            if remove:
                with activity.shield_thread_cancel_exception():
                    builder.remove(name)

    def _pump(self, builder: Builder, name: str, key: str, offset: int) -> int:
        while True:
            chunk = builder.read_log(name, offset, LOG_CHUNK)
            if not chunk:
                return offset
            self.log_store.write_at(key, offset, chunk)
            offset += len(chunk)
            if len(chunk) < LOG_CHUNK:
                return offset

    def _note(self, key: str, text: str) -> None:
        line = f"[katkit] {text}\n".encode()
        self.log_store.write_at(key, self.log_store.size(key), line)

    @activity.defn(name="remove_builder")
    @translate_errors
    def remove_builder(self, inp: RemoveBuilderInput) -> None:
        self._builders(inp.tenant).remove(inp.builder)

    @activity.defn(name="deploy")
    @translate_errors
    def deploy(self, inp: DeployInput) -> DeployResult:
        """Put the sha into the image and update the running service, keeping its env vars and replicas."""
        platform = self._platforms(inp.tenant)
        image = inp.service.image_for(inp.sha)
        running = platform.current(inp.tenant, inp.service.name)
        fields = inp.service.fields
        if running is not None:
            extra, replicas, previous = running.extra_config, running.replicas, running.image
        else:  # the first deploy of a service: nothing runs yet, so the file's values (if any) apply
            extra = fields.get("ExtraConfig") if isinstance(fields.get("ExtraConfig"), str) else None
            replicas = int(fields["Replicas"]) if isinstance(fields.get("Replicas"), int) else 1
            previous = None
        now = datetime.now(timezone.utc)
        if running is not None and running.image == image:
            history = platform.history(inp.tenant, inp.service.name)
            if history and history[-1].run_id == inp.run_id:  # a retry after the deploy went through
                previous = history[-1].previous_image
                return DeployResult(service=inp.service.name, image=image, previous_image=previous,
                                    replicas=replicas, extra_config=extra, deployed_at=history[-1].at)
        target = RunningService(name=inp.service.name, image=image, extra_config=extra, replicas=replicas,
                                fields={k: v for k, v in fields.items() if k not in ("ExtraConfig", "Replicas")})
        record = DeploymentRecord(run_id=inp.run_id, sha=inp.sha, previous_image=previous, image=image,
                                  replicas=replicas, started_by=inp.started_by, approved_by=inp.approved_by, at=now)
        platform.deploy(inp.tenant, inp.service, target, record, progress=activity.heartbeat)
        previous = record.previous_image
        log.info("deployed", run_id=inp.run_id, tenant=inp.tenant.name, service=inp.service.name, image=image)
        return DeployResult(service=inp.service.name, image=image, previous_image=previous, replicas=replicas,
                            extra_config=extra, deployed_at=now)
