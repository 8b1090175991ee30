"""The deployment phase: the tenant service's deploy lock, the deploy itself, and the service's ledger.

``deploy`` is async (it talks to the DeployLock workflow) and runs the platform's sync SDK on the worker's
thread pool, heartbeating meanwhile. ``closed_runs`` is the lock watchdog's question.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime, timezone
from pathlib import Path

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import translate_errors
from katkit.backends import get_platform
from katkit.config import TenantConfig
from katkit.freeze import open_window
from katkit.models import (ClosedRunsInput, DeployInput, DeployResult, FreezeCheck, FreezeCheckInput, FreezeEntry,
                           FreezeState, LedgerRecord, LockGrant, LockRequest)
from katkit.names import LEDGER_RECORD, LOCK_ACQUIRE, LOCK_RELEASE, UPDATE_FREEZE_WATCH, deploy_lock_id, freezes_id
from katkit.platforms import DeploymentRecord, Platform, RunningService
from katkit.platforms.history import ServiceRecords
from katkit.states import ErrorType
from katkit.temporal import describe_or_none, is_open, ledger_start

log = structlog.get_logger("katkit.activities")


def _ask_again(exc: RPCError) -> bool:
    """The server turned an update of the lock away for those already in flight on it (history.maxInFlightUpdates),
    or aborted it (its workflow task failed or timed out on a busy worker: 'workflow update was aborted')."""
    return exc.status in (RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE)


def _env_names(extra_config: str | None) -> list[str]:
    """The names of a service's env vars (ExtraConfig): what a deploy's result says it kept, never the values."""
    from katkit.errors import BadInput
    from katkit.platforms.docker import parse_extra_config

    try:
        return sorted(parse_extra_config(extra_config))
    except BadInput:
        return []


class DeployActivities:
    """``deploy`` and ``closed_runs``: what needs the Temporal client (locks, ledgers) and the platforms."""

    def __init__(self, home: Path, client: Client | None, *, executor: Executor | None = None,
                 platforms: Callable[[TenantConfig], Platform] | None = None, lock_watchdog_s: float = 30.0) -> None:
        self.home = home  # where an older katkit kept JSON deployment histories (imported into the ledger once)
        self.client = client  # None: no lock and no ledger (unit tests of the deploy itself)
        self.executor = executor
        self._platforms = platforms or (lambda t: get_platform(t.platform, home))
        self.lock_watchdog_s = lock_watchdog_s

    @activity.defn(name="deploy")
    async def deploy(self, inp: DeployInput) -> DeployResult:
        """Take the tenant service's deploy lock, then deploy (keeping env vars and replicas), then release it."""
        req = LockRequest(tenant=inp.tenant.name, service=inp.service, run_id=inp.run_id,
                          execution=inp.execution, policy=inp.tenant.deploy_lock, can_queue=True)
        grant = await self._acquire(req) if self.client is not None else LockGrant(granted=True)
        if not grant.granted:
            why = f"superseded by newer run {grant.superseded_by}" if grant.superseded_by else "the deploy lock was withdrawn"
            raise ApplicationError(why, type=ErrorType.SUPERSEDED, non_retryable=True)
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
                await self._update_lock(req, LEDGER_RECORD, LedgerRecord(record=record, legacy=legacy))
            return result
        except BaseException:
            with contextlib.suppress(BaseException):
                await asyncio.shield(job)  # a deploy that has begun ends before the lock is given up
            raise
        finally:
            if self.client is not None:
                await asyncio.shield(self._release(req))

    @staticmethod
    def _lock_id(req: LockRequest) -> str:
        return deploy_lock_id(activity.info().task_queue, req.tenant, req.service)

    async def _acquire(self, req: LockRequest) -> LockGrant:
        """Ask until granted or superseded. Queued outside the lock (too many wait inside it), or turned away by the
        server's limit on updates in flight, the request keeps its place and asks again soon."""
        assert self.client is not None
        try:
            return await self._ask_until_granted(req)
        except BaseException:  # cancelled or failed while it waited: its place in the queue goes too
            await asyncio.shield(self._release(req))
            raise

    async def _ask_until_granted(self, req: LockRequest) -> LockGrant:
        assert self.client is not None
        asked, position, strained = time.monotonic(), 0, 0
        while True:
            start = ledger_start(activity.info().task_queue, req.tenant, req.service, self.lock_watchdog_s, req.policy)
            call = asyncio.ensure_future(self.client.execute_update_with_start_workflow(
                LOCK_ACQUIRE, req, start_workflow_operation=start, result_type=LockGrant))
            try:
                while True:
                    done, _ = await asyncio.wait({call}, timeout=2.0)
                    if done:
                        break
                    activity.heartbeat("waiting for the deploy lock")
            except BaseException:
                call.cancel()
                raise
            try:
                grant: LockGrant = call.result()
                strained = 0
            except WorkflowUpdateFailedError:  # turned away before it was taken: still queued, its place kept
                grant = LockGrant(granted=False, queued=True, position=position)
                strained = 0  # the lock's worker answered: it keeps up
            except RPCError as exc:
                if not _ask_again(exc):
                    raise
                # turned away or aborted: the lock's worker is behind. Asking again at once only adds to what it has
                # to answer (each ask is a workflow task), so those who wait back off until it keeps up
                grant = LockGrant(granted=False, queued=True, position=position)
                strained += 1
            finally:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(start.workflow_handle(), 0.01)  # its outcome taken: never logged unread
            if not grant.queued:
                grant.waited_s = max(grant.waited_s, time.monotonic() - asked)
                return grant
            position = grant.position
            activity.heartbeat(f"waiting for the deploy lock ({position} before it)")
            # the closer it is to its turn, the sooner it asks again (each ask is an update in flight a moment);
            # after asks the server turned away or aborted, later and later (0.5, 1, 2, 4 s, then every 5 s)
            delay = min(5.0, 0.25 * 2 ** strained) if strained else min(2.0, 0.2 + 0.05 * position)
            await asyncio.sleep(delay * random.uniform(0.7, 1.3))

    async def _update_lock(self, req: LockRequest, name: str, arg: object) -> None:
        """An update of the lock workflow (release, record), asked again while the server turns it away for the
        updates already in flight there (the waits inside the lock are capped, so a slot comes soon)."""
        assert self.client is not None
        for tries in range(200):
            try:
                await self.client.get_workflow_handle(self._lock_id(req)).execute_update(name, arg)
                return
            except RPCError as exc:
                if not _ask_again(exc) or tries == 199:
                    raise
            await asyncio.sleep(random.uniform(0.05, 0.3))

    async def _release(self, req: LockRequest) -> None:
        assert self.client is not None
        try:
            await self._update_lock(req, LOCK_RELEASE, req)
        except Exception as exc:  # noqa: BLE001 - the lock's watchdog frees it once this run closes
            log.warning("could not release the deploy lock", run_id=req.run_id, error=str(exc))

    @translate_errors
    def _deploy_sync(self, inp: DeployInput, last: DeploymentRecord | None,
                     waited_s: float) -> tuple[DeployResult, DeploymentRecord | None]:
        """Deploy; return the result and the record for the ledger (None: this run's deploy went through already).

        ``last`` is the service's last deployment from its ledger: the same on every host, unlike a per-host
        engine or service file."""
        platform = self._platforms(inp.tenant)
        started = datetime.now(timezone.utc)
        running = platform.current(inp.tenant, inp.service)
        fields = inp.description.fields if inp.description is not None else {}
        if running is not None:
            extra, replicas = running.extra_config, running.replicas
        else:  # nothing runs here yet: the file's values apply (a platform of another host: the ledger's replicas)
            in_file, replicas_in_file = fields.get("ExtraConfig"), fields.get("Replicas")
            extra = in_file if isinstance(in_file, str) else None
            replicas = last.replicas if last is not None else replicas_in_file if isinstance(replicas_in_file, int) else 1
        if running is not None and running.image == inp.image and last is not None and \
                (last.run_id, last.execution) == (inp.run_id, inp.execution):  # a retry after the deploy went through
            return DeployResult(service=inp.service, image=inp.image, previous_image=last.previous_image,
                                replicas=replicas, env_names=_env_names(extra), deployed_at=last.at,
                                lock_waited_s=waited_s, started_at=started), None
        previous = last.image if last is not None else running.image if running is not None else None
        target = RunningService(name=inp.service, image=inp.image, extra_config=extra, replicas=replicas,
                                fields={k: v for k, v in fields.items() if k not in ("ExtraConfig", "Replicas")})
        record = platform.deploy(inp.tenant, target, DeploymentRecord(
            run_id=inp.run_id, execution=inp.execution, sha=inp.sha, previous_image=previous, image=inp.image,
            replicas=replicas, started_by=inp.started_by, approved_by=inp.approved_by, at=started, repo=inp.repo,
            kind=inp.kind, attempt=inp.attempt, approvals=inp.approvals, freeze_overrides=inp.freeze_overrides,
            failed_phase=inp.failed_phase), progress=lambda: None)
        record = record.model_copy(update={"ended_at": datetime.now(timezone.utc)})
        log.info("deployed", run_id=inp.run_id, tenant=inp.tenant.name, service=inp.service, image=inp.image,
                 kind=inp.kind)
        return DeployResult(service=inp.service, image=inp.image, previous_image=record.previous_image,
                            replicas=replicas, env_names=_env_names(extra), deployed_at=datetime.now(timezone.utc),
                            lock_waited_s=waited_s, started_at=started), record

    @activity.defn(name="freeze_check")
    async def freeze_check(self, inp: FreezeCheckInput) -> FreezeCheck:
        """Whether the tenant is frozen now: a recurring window of its config or an ad hoc freeze (its TenantFreezes
        workflow, which tells this run of the next unfreeze); the one that lasts longest."""
        now = datetime.now(timezone.utc)
        found: list[FreezeEntry] = []
        window = open_window(inp.tenant.freezes, now)
        if window is not None:
            w, until = window
            found.append(FreezeEntry(tenant=inp.tenant.name, until=until.astimezone(timezone.utc), reason=w.reason,
                                     source="window", window=f"{w.start} ({w.timezone})"))
        wf_id = freezes_id(activity.info().task_queue, inp.tenant.name)
        if self.client is not None and await is_open(self.client, wf_id):  # no workflow: no ad hoc freeze (none started)
            try:
                state: FreezeState = await self.client.get_workflow_handle(wf_id).execute_update(
                    UPDATE_FREEZE_WATCH, inp.run_id, result_type=FreezeState)
                found += [f for f in state.freezes if f.until > now]
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # closed meanwhile (idle: it had no freeze)
                    raise
        return FreezeCheck(freeze=max(found, key=lambda f: f.until) if found else None)

    @activity.defn(name="closed_runs")
    async def closed_runs(self, inp: ClosedRunsInput) -> list[str]:
        """Which of these runs have closed (or never existed): the deploy lock's watchdog frees their hold."""
        assert self.client is not None
        closed = []
        for run_id, execution in inp.executions:
            desc = await describe_or_none(self.client, run_id, execution or None)
            if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
                closed.append(run_id)
        return closed
