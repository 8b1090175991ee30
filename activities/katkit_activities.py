"""The activities of a commit run, as methods on a class that holds its clients (so tests hand in fakes).

All are sync (git, docker-py, boto3 are sync SDKs) and run on the worker's thread pool. Errors are
translated at this boundary: bad input is a non-retryable ``BadInput`` ApplicationError; infrastructure
faults are retryable.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
import contextlib
import functools
import json
import time
import urllib.parse
import urllib.request
from concurrent.futures import Executor
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.exceptions import ApplicationError, CancelledError

from katkit.builders import Builder, BuilderSpec, builder_for, builder_name
from katkit.config import LinkConfig, TenantConfig
from katkit.errors import BAD_INPUT_TYPE, BadInput, InfraError
from katkit.gitrepo import RepoMirror, is_remote, normalize_url
from katkit.logstore import LogStore
from katkit.models import (
    CheckoutInput,
    ClosedRunsInput,
    LedgerRecord,
    PickHostInput,
    LockGrant,
    LockRequest,
    NotifyInput,
    PhaseType,
    DeployInput,
    DeployResult,
    GitHubReportInput,
    GitHubReportResult,
    RemoveBuilderInput,
    RunPlan,
    ShardInput,
    ShardResult,
)
from katkit.names import LEDGER_RECORD, LOCK_ACQUIRE, LOCK_RELEASE, deploy_lock_id, log_key
from katkit.plan import read_plan
from katkit.temporal import ledger_start
from katkit.backends import get_platform
from katkit.platforms import DeploymentRecord, Platform, RunningService
from katkit.platforms.history import ServiceRecords

LOG_CHUNK = 1 << 20
POLL_S = 0.5  # how often the log is copied to the store while ci.sh runs; exits are seen at once
TIMED_OUT_EXIT = 124
NOTIFY_TIMEOUT_S = 5

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


def ping_queue(host_queue: str) -> str:
    """The queue a worker host answers ``ping_host`` on, whatever its other queues' load."""
    return f"{host_queue}/ping"


@activity.defn(name="ping_host")
async def ping_host() -> str:
    """Answered at once by a live host (a worker of its own, async): a busy host is not a gone host."""
    return activity.info().task_queue.removesuffix("/ping")


def installation_queue(task_queue: str) -> str:
    """The shared task queue of a worker host's own queue (``katkit@host`` -> ``katkit``): what labels name."""
    return task_queue.split("@", 1)[0]


class _Writers:
    """Log key -> the newest attempt that has claimed it in this process. A timed-out attempt may still run when
    the server hands its retry to this worker; it stops writing (and leaves the builder alone) once a newer attempt
    has claimed the log. The newest claims are kept (bounded), never dropped when an attempt ends."""

    KEEP = 20_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: OrderedDict[str, int] = OrderedDict()

    def claim(self, key: str, attempt: int) -> None:
        with self._lock:
            self._newest[key] = max(attempt, self._newest.get(key, 0))
            self._newest.move_to_end(key)
            while len(self._newest) > self.KEEP:
                self._newest.popitem(last=False)

    def superseded(self, key: str, attempt: int) -> bool:
        return self._newest.get(key, attempt) > attempt


_log_writers = _Writers()


def _cancel_reason(details: activity.ActivityCancellationDetails | None) -> str:
    if details is None:
        return "unknown"
    return ", ".join(k for k in ("timed_out", "not_found", "worker_shutdown", "paused", "reset", "cancel_requested")
                     if getattr(details, k)) or "unknown"


def contract_env(inp: ShardInput, github_token: str | None = None) -> dict[str, str]:
    """What ci.sh sees: the BuildParams, then the contract's KATKIT_* variables (which win).

    The worker's GitHub token only when the tenant asks for it (``github.token_to_builder``) and the link is
    on GitHub: a builder that clones another host never has it.
    """
    token = inp.link.github_token(github_token) if inp.tenant.github.token_to_builder else None
    secret = {"GITHUB_TOKEN": token} if token else {}
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
        **secret,
    }


class KatkitActivities:
    def __init__(
        self,
        home: Path,
        log_store: LogStore,
        mirror: RepoMirror | None = None,
        builders: Callable[[TenantConfig], Builder] | None = None,
        platforms: Callable[[TenantConfig], Platform] | None = None,
        client: Client | None = None,
        executor: Executor | None = None,
        lock_watchdog_s: float = 30.0,
        ui_url: str = "http://localhost:8233",
        github_token: str | None = None,
        host_queue: str | None = None,
    ) -> None:
        self.host_queue = host_queue  # this worker host's own task queue (None: shards go to the shared queue)
        self.ui_url = ui_url
        self._github_token = github_token
        self.client = client
        self.lock_watchdog_s = lock_watchdog_s
        self.executor = executor
        self.home = home
        self.log_store = log_store
        self.mirror = mirror or RepoMirror(home / "git")
        self._builders = builders or (lambda t: builder_for(t, home))
        self._platforms = platforms or (lambda t: get_platform(t.platform, home))

    def all(self) -> list[Callable[..., Any]]:
        return [self.checkout, self.run_shard, self.remove_builder, self.deploy, self.closed_runs, self.notify,
                self.github_report, self.pick_host]

    def host_bound(self) -> list[Callable[..., Any]]:
        """What the worker host's own task queue serves: the activities that touch a builder of this host."""
        return [self.run_shard, self.remove_builder]

    @activity.defn(name="pick_host")
    def pick_host(self, inp: PickHostInput) -> str:
        """This worker host's task queue: where shards go when the host that had them did not come back."""
        log.info("taking over shards from a host that did not come back", why=inp.reason, host=self.host_queue)
        return self.host_queue or activity.info().task_queue

    def _token(self, link: LinkConfig) -> str | None:
        return link.github_token(self._github_token)

    def _run_url(self, run_id: str) -> str:
        ns = activity.info().workflow_namespace
        return f"{self.ui_url}/namespaces/{ns}/workflows/{urllib.parse.quote(run_id, safe='')}"

    @activity.defn(name="checkout")
    @translate_errors
    def checkout(self, inp: CheckoutInput) -> RunPlan:
        """Resolve the sha and read + validate the repository's files at it."""
        plan = read_plan(self.mirror, inp.link, inp.env, inp.sha, self._token(inp.link))
        if inp.tenant is not None:  # every builder image must be there before any builder starts
            builder = self._builders(inp.tenant)
            for image in sorted({p.image or "" for p in plan.phases if p.type == PhaseType.EXECUTION}):
                builder.check_image(image or None)
        plan.host_queue = self.host_queue  # the run's shards go to this host, which has just fetched the sha
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
        result = self._run_shard_to_end(inp)
        took = (result.ended_at - result.started_at).total_seconds() if result.started_at and result.ended_at else None
        ending = result.message if " in " in result.message or took is None else f"{result.message} in {took:.1f} s"
        result.summary = f"{inp.phase.name} shard {inp.shard_index + 1}/{inp.phase.parallelism}: {ending}"
        return result

    def _run_shard_to_end(self, inp: ShardInput) -> ShardResult:
        name = builder_name(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        key = log_key(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        builder = self._builders(inp.tenant)
        spec = BuilderSpec(
            name=name,
            labels={"katkit.run": inp.run_id, "katkit.tenant": inp.tenant.name, "katkit.repo": inp.link.repo,
                    "katkit.sha": inp.sha, "katkit.phase": inp.phase.name, "katkit.shard": str(inp.shard_index),
                    "katkit.execution": inp.attempt_key, "katkit.namespace": activity.info().workflow_namespace,
                    "katkit.task_queue": installation_queue(activity.info().task_queue),
                    "katkit.generation": str(inp.generation)},
            repo_url=normalize_url(inp.link.url), sha=inp.sha, folder=inp.link.folder,
            env=contract_env(inp, self._github_token), image=inp.phase.image, local_fleet=inp.local_fleet,
            mirror_path=str(self.mirror.mirror_path(inp.link.url)),
        )
        attempt = activity.info().attempt
        _log_writers.claim(key, attempt)  # this attempt writes the log now; an older one still running stops writing
        recorded = self.log_store.outcome(key)
        if recorded:  # an earlier attempt saw the shard end; only its completion was lost (a server outage)
            log.info("shard already finished", builder=name)
            builder.remove(name, progress=activity.heartbeat)
            return ShardResult.model_validate_json(recorded)
        started_at = datetime.now(timezone.utc)
        remove = True
        try:
            if is_remote(spec.repo_url) or (inp.tenant.builder == "docker" and inp.tenant.docker.mount_mirror):
                # the builder clones this host's mirror: it must hold the sha (checkout may have run elsewhere)
                self.mirror.resolve(inp.link.url, sha=inp.sha, token=self._token(inp.link))
            fresh = builder.start(spec)
            log.info("builder started" if fresh else "builder re-attached", builder=name)
            # the log continues from what this builder produced, as the last attempt reported it, never from the
            # store's size (which may hold what another builder or a note wrote)
            details = activity.info().heartbeat_details
            offset = int(details[0]) if details and not fresh else 0
            note = f"[katkit] {inp.log_note}\n".encode() if inp.log_note else b""
            if fresh and note:  # why this builder is a new one (its host did not come back), then its own log
                self.log_store.write_at(key, 0, note)
            deadline = inp.deadline.timestamp()
            waited = False
            while True:
                state = builder.state(name)
                offset = self._pump(builder, name, key, offset, attempt, base=len(note))
                if not state.running:
                    break
                if time.time() >= deadline:
                    timeout_s = inp.tenant.phase_timeout.total_seconds()
                    self._note(key, f"phase timed out: ci.sh is killed after the phase timeout ({timeout_s:.0f} s)")
                    result = self._finished(key, ShardResult(  # recorded first: a retry finds it, never a half-killed builder
                        builder=name, exit_code=TIMED_OUT_EXIT, log_key=key, started_at=started_at,
                        ended_at=datetime.now(timezone.utc), reattached=not fresh,
                        message=f"timed out after the phase timeout of {timeout_s:.0f} s"))
                    builder.remove(name, progress=lambda: activity.heartbeat(offset))
                    return result
                if waited:  # most no-op phases end within the first wait: no heartbeat RPC for them
                    activity.heartbeat(offset)
                builder.wait(name, POLL_S)
                waited = True
            code = state.exit_code if state.exit_code is not None else -1
            message = state.reason or f"exited {code}"
            if state.exit_code is None:
                self._note(key, message)
            log.info("shard finished", exit_code=code)
            return self._finished(key, ShardResult(builder=name, exit_code=code, log_key=key, started_at=started_at,
                                                   ended_at=datetime.now(timezone.utc), reattached=not fresh,
                                                   message=message))
        except CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.cancel_requested and not activity.is_worker_shutdown():
                with activity.shield_thread_cancel_exception():  # the workflow asked: the builder goes
                    self._note(key, "cancelled: the builder was stopped")
                    self.log_store.finish(key)
            else:  # a heartbeat timeout, a lost server, a worker shutting down: the next attempt re-attaches
                remove = False
                log.info("shard attempt ended without a cancel request; builder left for the next attempt",
                         builder=name, why=_cancel_reason(details))
            raise
        except ApplicationError:
            raise
        except BaseException:
            remove = False  # a retry re-attaches; the workflow removes the builder if retries run out
            raise
        finally:
            if _log_writers.superseded(key, attempt):
                remove = False  # a newer attempt has the builder now
            if remove:
                with activity.shield_thread_cancel_exception():
                    builder.remove(name, progress=activity.heartbeat)

    def _finished(self, key: str, result: ShardResult) -> ShardResult:
        """Record the shard's result with its complete log before the builder goes: an attempt whose completion
        never reached the server is followed by one that finds it here instead of running ci.sh again."""
        self.log_store.finish(key, result.model_dump_json())
        return result

    def _pump(self, builder: Builder, name: str, key: str, offset: int, attempt: int, base: int = 0) -> int:
        """Copy the builder's log from ``offset`` into the store (at ``base + offset``); return the new offset."""
        while True:
            if _log_writers.superseded(key, attempt):
                raise CancelledError("a newer attempt of this shard writes its log now")
            chunk = builder.read_log(name, offset, LOG_CHUNK)
            if not chunk:
                return offset
            self.log_store.write_at(key, base + offset, chunk)
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
    async def deploy(self, inp: DeployInput) -> DeployResult:
        """Take the tenant service's deploy lock, then deploy (keeping env vars and replicas), then release it."""
        req = LockRequest(tenant=inp.tenant.name, service=inp.service.name, run_id=inp.run_id,
                          execution=inp.execution, policy=inp.tenant.deploy_lock)
        grant = await self._acquire(req) if self.client is not None else LockGrant(granted=True)
        if not grant.granted:
            why = f"superseded by newer run {grant.superseded_by}" if grant.superseded_by else "the deploy lock was withdrawn"
            raise ApplicationError(why, type="Superseded", non_retryable=True)
        # the JSON history an older katkit kept on this host goes into the ledger with the first record (once)
        legacy = [] if grant.imported else ServiceRecords(self.home / "services").history(req.tenant, req.service)
        last = grant.last or (legacy[-1] if legacy else None)
        job = asyncio.get_running_loop().run_in_executor(self.executor, self._deploy_sync, inp, last, grant.waited_s)
        try:
            while True:  # heartbeat from the event loop while the sync SDK works on a thread
                try:
                    result, record = await asyncio.wait_for(asyncio.shield(job), timeout=1.0)
                    break
                except asyncio.TimeoutError:
                    activity.heartbeat()
            if record is not None and self.client is not None:  # into the service's ledger, before the lock goes
                lock = deploy_lock_id(activity.info().task_queue, req.tenant, req.service)
                await self.client.get_workflow_handle(lock).execute_update(
                    LEDGER_RECORD, LedgerRecord(record=record, legacy=legacy))
            return result
        except BaseException:
            with contextlib.suppress(BaseException):
                await asyncio.shield(job)  # a deploy that has begun ends before the lock is given up
            raise
        finally:
            if self.client is not None:
                await asyncio.shield(self._release(req))

    async def _acquire(self, req: LockRequest) -> LockGrant:
        assert self.client is not None
        start = ledger_start(activity.info().task_queue, req.tenant, req.service, self.lock_watchdog_s, req.policy)
        call = asyncio.ensure_future(self.client.execute_update_with_start_workflow(
            LOCK_ACQUIRE, req, start_workflow_operation=start, result_type=LockGrant))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=2.0)
                if done:
                    return call.result()
                activity.heartbeat("waiting for the deploy lock")
        except BaseException:
            call.cancel()
            raise

    async def _release(self, req: LockRequest) -> None:
        assert self.client is not None
        try:
            lock = deploy_lock_id(activity.info().task_queue, req.tenant, req.service)
            await self.client.get_workflow_handle(lock).execute_update(LOCK_RELEASE, req)
        except Exception as exc:  # noqa: BLE001 - the lock's watchdog frees it once this run closes
            log.warning("could not release the deploy lock", run_id=req.run_id, error=str(exc))

    @translate_errors
    def _deploy_sync(self, inp: DeployInput, last: DeploymentRecord | None,
                     waited_s: float) -> tuple[DeployResult, DeploymentRecord | None]:
        """Deploy; return the result and the record for the ledger (None: this run's deploy went through already).

        ``last`` is the service's last deployment from its ledger: the same on every host, unlike a per-host
        engine or service file."""
        platform = self._platforms(inp.tenant)
        image = inp.image or inp.service.image_for(inp.sha)
        started = datetime.now(timezone.utc)
        running = platform.current(inp.tenant, inp.service.name)
        fields = inp.service.fields
        if running is not None:
            extra, replicas = running.extra_config, running.replicas
        else:  # nothing runs here yet: the file's values apply (a platform of another host: the ledger's replicas)
            extra = fields.get("ExtraConfig") if isinstance(fields.get("ExtraConfig"), str) else None
            replicas = last.replicas if last is not None else \
                int(fields["Replicas"]) if isinstance(fields.get("Replicas"), int) else 1
        if running is not None and running.image == image and last is not None and \
                (last.run_id, last.execution) == (inp.run_id, inp.execution):  # a retry after the deploy went through
            return DeployResult(service=inp.service.name, image=image, previous_image=last.previous_image,
                                replicas=replicas, extra_config=extra, deployed_at=last.at,
                                lock_waited_s=waited_s, started_at=started), None
        previous = last.image if last is not None else running.image if running is not None else None
        target = RunningService(name=inp.service.name, image=image, extra_config=extra, replicas=replicas,
                                fields={k: v for k, v in fields.items() if k not in ("ExtraConfig", "Replicas")})
        record = DeploymentRecord(run_id=inp.run_id, execution=inp.execution, sha=inp.sha, previous_image=previous,
                                  image=image, replicas=replicas, started_by=inp.started_by, approved_by=inp.approved_by,
                                  at=started, repo=inp.repo, kind="rollback" if inp.image else "deploy")
        platform.deploy(inp.tenant, inp.service, target, record, progress=lambda: None)
        now = datetime.now(timezone.utc)
        log.info("deployed", run_id=inp.run_id, tenant=inp.tenant.name, service=inp.service.name, image=image)
        return DeployResult(service=inp.service.name, image=image, previous_image=record.previous_image,
                            replicas=replicas, extra_config=extra, deployed_at=now, lock_waited_s=waited_s,
                            started_at=started), record

    @activity.defn(name="closed_runs")
    async def closed_runs(self, inp: ClosedRunsInput) -> list[str]:
        """Which of these runs have closed (or never existed): the deploy lock's watchdog frees their hold."""
        assert self.client is not None
        closed = []
        for run_id, execution in inp.executions:
            try:
                desc = await self.client.get_workflow_handle(run_id, run_id=execution or None).describe()
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    closed.append(run_id)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                closed.append(run_id)
        return closed

    @activity.defn(name="notify")
    def notify(self, inp: NotifyInput) -> None:
        """POST the event as JSON to each webhook; a failing one is retried, then given up (never fails a run)."""
        event = dict(inp.event)
        if event.get("run_id"):
            event["url"] = self._run_url(str(event["run_id"]))
        body = json.dumps(event).encode()
        failed = []
        for url in inp.urls:
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "katkit"})
            try:
                with urllib.request.urlopen(req, timeout=NOTIFY_TIMEOUT_S) as resp:
                    resp.read()
            except (OSError, ValueError) as exc:
                failed.append(f"{url}: {exc}")
        if failed:
            raise ApplicationError(f"webhook delivery failed: {'; '.join(failed)[:300]}", type="WebhookFailed")

    @activity.defn(name="github_report")
    @translate_errors
    def github_report(self, inp: GitHubReportInput) -> GitHubReportResult:
        """Tell GitHub what the run did, in order: commit statuses, its deployment and the deployment's states.

        Progress is heartbeated, so a retry after GitHub failed half-way resumes where it stopped.
        """
        token = self._token(inp.link)
        if not token:
            log.warning("no KATKIT_GITHUB_TOKEN on this worker: GitHub statuses and deployments are not sent",
                        repo=inp.link.github)
            return GitHubReportResult(deployment_id=inp.deployment_id)
        from katkit.gh import GitHubRepo

        gh = GitHubRepo(inp.link, token)
        details = activity.info().heartbeat_details
        done, deployment_id = (int(details[0]), details[1]) if len(details) >= 2 else (0, inp.deployment_id)
        target = self._run_url(inp.run_id)
        for i, update in enumerate(inp.updates[done:], start=done):
            if update.kind == "status":
                gh.commit_status(inp.sha, update, target)
            elif update.kind == "deployment":
                deployment_id = gh.deployment(inp.sha, update, f"{inp.run_id}/{inp.execution}")
            elif deployment_id is not None:
                gh.deployment_status(deployment_id, update, target)
            activity.heartbeat(i + 1, deployment_id)
        return GitHubReportResult(deployment_id=deployment_id, sent=len(inp.updates))
