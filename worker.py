"""The katkit worker: polls the ``katkit`` task queue and runs CommitRun and its activities.

Run it with ``katkit worker`` (or ``python worker.py``); any number of workers may poll the same queue.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import DeployActivities, HostActivities, ReportActivities, ShardActivities, ping_host, ping_queue
from katkit.config import Settings, load_settings
from katkit.log import configure_logging, get_logger
from katkit.logstore import log_store_for
from katkit.preload import import_sdks
from katkit.reaper import reap_forever
from katkit.names import LEDGER_IMPORT
from katkit.platforms.history import ServiceRecords
from katkit.temporal import connect, ensure_search_attributes, is_open, ledger_start
from workflows import CommitRun, DeployLock, Promotion, TenantFreezes

MAX_CONCURRENT_ACTIVITIES = 100
HEARTBEAT_THROTTLE = timedelta(seconds=1)
log = get_logger("katkit.worker")


class KatkitWorker:
    """The workers of one host: the shared task queue (workflows and every activity), the host's own queue (the
    activities that touch this host's builders, so a shard's retries come back here and re-attach) and its ping
    queue (answered at once while the host lives, however busy: how a run tells a busy host from a gone one)."""

    def __init__(self, *workers: Worker, on_start: Callable[[], Awaitable[object]] | None = None,
                 on_stop: Callable[[], None] = lambda: None,
                 background: Callable[[], Awaitable[object]] | None = None) -> None:
        self.workers = workers
        self._on_start = on_start
        self._on_stop = on_stop  # once its workers have stopped (the preparer drops what it has not begun)
        self._background = background  # runs while the workers do
        self._started: asyncio.Future[object] | None = None
        self._running: asyncio.Future[object] | None = None

    def _start_background(self) -> None:
        """What the host does once it polls (it needs a worker to answer): in the background, never failing it."""
        if self._on_start is not None and self._started is None:
            self._started = asyncio.ensure_future(self._on_start())
        if self._background is not None and self._running is None:
            self._running = asyncio.ensure_future(self._background())

    def _stop_background(self) -> None:
        for task in (self._started, self._running):
            if task is not None and not task.done():
                task.cancel()

    async def run(self) -> None:
        """Run them all; when one stops (or fails), the others are shut down too, and its failure raised."""
        runs = [asyncio.ensure_future(w.run()) for w in self.workers]
        self._start_background()
        try:
            await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop_background()
            for w, run in zip(self.workers, runs):
                if not run.done():
                    await w.shutdown()
            results = await asyncio.gather(*runs, return_exceptions=True)
            self._on_stop()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> KatkitWorker:
        for w in self.workers:
            await w.__aenter__()
        self._start_background()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stop_background()
        await asyncio.gather(*(w.__aexit__(exc_type, exc, tb) for w in self.workers))
        self._on_stop()


def build_worker(client: Client, settings: Settings, executor: ThreadPoolExecutor) -> KatkitWorker:
    """The host's workers, sharing ``executor``: its threads are split between the shared queue and the host's own,
    so together they never take more activities than there are threads to run them."""
    import_sdks()  # here, on one thread: activity threads importing a heavy SDK together can see it half-made
    shards = ShardActivities(settings.home, log_store_for(settings), github_token=settings.github_token,
                             host_queue=settings.host_queue)
    deploys = DeployActivities(settings.home, client, executor=executor, lock_watchdog_s=settings.lock_watchdog)
    reports = ReportActivities(ui_url=settings.ui_url, github_token=settings.github_token)
    host_bound: list[Callable[..., Any]] = [shards.run_shard, shards.remove_builder,  # this host's builders
                                              shards.prepare_builder]
    host_slots = max(1, executor._max_workers // 2)
    common: dict[str, Any] = dict(
        activity_executor=executor,
        # a cancel reaches an activity only in the answer to a heartbeat: send them often enough that a
        # cancelled run's builders stop within a few seconds (the default throttle is 80% of the timeout)
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        identity=worker_identity(settings),
    )
    shared = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[CommitRun, DeployLock, Promotion, TenantFreezes],
        # the log formatter runs where the workflow logs: let it use the real structlog, not a sandboxed copy
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                "structlog", "rich", "pydantic", "pydantic_core", "annotated_types", "katkit", "activities",
                "cryptography")),
        activities=[shards.checkout, *host_bound, deploys.deploy, deploys.closed_runs,
                    deploys.freeze_check, reports.notify,
                    reports.github_report, HostActivities(settings.host_queue).pick_host],
        max_concurrent_activities=max(1, executor._max_workers - host_slots),
        **common,
    )
    host = Worker(client, task_queue=settings.host_queue, activities=host_bound,
                  max_concurrent_activities=host_slots, **common)
    ping = Worker(client, task_queue=ping_queue(settings.host_queue), activities=[ping_host],
                  max_concurrent_activities=8, identity=worker_identity(settings))
    return KatkitWorker(shared, host, ping, on_start=lambda: offer_old_histories(client, settings),
                        on_stop=shards.preparer.close,
                        # builders prepared here whose run closed before a shard claimed them go within seconds
                        background=lambda: shards.preparer.watch(lambda wf, run: is_open(client, wf, run)))


async def offer_old_histories(client: Client, settings: Settings) -> int:
    """Merge the JSON deployment history an older katkit kept on this host into each service's ledger (a record
    is taken once, however often it is offered); return how many services had one."""
    records = ServiceRecords(settings.home / "services")
    tenants = sorted(p.name for p in records.root.iterdir() if p.is_dir()) if records.root.is_dir() else []
    offered = 0
    for tenant in tenants:
        for service in records.services(tenant):
            try:
                legacy = records.history(tenant, service)
                if not legacy:
                    continue
                start = ledger_start(settings.task_queue, tenant, service, settings.lock_watchdog)
                await client.execute_update_with_start_workflow(LEDGER_IMPORT, legacy, start_workflow_operation=start)
                offered += 1
            except Exception as exc:  # noqa: BLE001 - a file it cannot read, or Temporal away: try at the next start
                log.warning("could not import an old deployment history", tenant=tenant, service=service, error=str(exc))
    if offered:
        log.info("offered old deployment histories to the ledgers", services=offered)
    return offered


def worker_identity(settings: Settings) -> str:
    """``pid@host logs=<log store>``: in the task queue's pollers, so a worker can tell that another host keeps
    its logs elsewhere (several hosts need one shared log store)."""
    return f"{os.getpid()}@{settings.host_queue.split('@', 1)[1]} logs={log_store_for(settings).location('')}"


async def warn_of_other_log_stores(client: Client, settings: Settings) -> list[str]:
    """Workers of other hosts on this task queue whose log store is not ours: say so, once, at start."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    mine = worker_identity(settings).split(" logs=", 1)[1]
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    others = sorted({p.identity for p in resp.pollers if " logs=" in p.identity and p.identity.split(" logs=", 1)[1] != mine})
    for other in others:
        log.warning("another worker host polls this task queue with another log store: several hosts need one shared "
                    "log store (KATKIT_LOG_STORE=s3://bucket/prefix, or KATKIT_LOG_DIR on storage every host mounts)",
                    task_queue=settings.task_queue, ours=mine, theirs=other)
    return others


async def run_worker(settings: Settings, client: Client | None = None, stop: asyncio.Event | None = None) -> None:
    client = client or await connect(settings)
    added = await ensure_search_attributes(client)
    if added:
        log.info("registered search attributes", names=added)
    reaper = asyncio.create_task(reap_forever(client, settings.home, settings.task_queue, settings.reap_interval))
    try:
        with ThreadPoolExecutor(max_workers=2 * MAX_CONCURRENT_ACTIVITIES) as executor:
            worker = build_worker(client, settings, executor)
            try:
                await warn_of_other_log_stores(client, settings)
            except Exception as exc:  # noqa: BLE001 - a check, never a reason not to start
                log.warning("could not compare log stores with other workers", error=str(exc))
            log.info("worker started", task_queue=settings.task_queue, host_queue=settings.host_queue,
                     address=settings.address, pid=os.getpid())
            if stop is None:
                await worker.run()
            else:
                async with worker:
                    await stop.wait()
    finally:
        reaper.cancel()


def main() -> None:
    configure_logging()
    asyncio.run(run_worker(load_settings()))


if __name__ == "__main__":
    main()
