"""The katkit worker: polls the ``katkit`` task queue and runs CommitRun and its activities.

Run it with ``katkit worker`` (or ``python worker.py``); any number of workers may poll the same queue.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import KatkitActivities
from katkit.config import Settings, load_settings
from katkit.log import configure_logging, get_logger
from katkit.logstore import log_store_for
from katkit.preload import import_sdks
from katkit.reaper import reap_forever
from katkit.temporal import connect, ensure_search_attributes
from workflows import CommitRun, DeployLock, Promotion

MAX_CONCURRENT_ACTIVITIES = 100
HEARTBEAT_THROTTLE = timedelta(seconds=1)
log = get_logger("katkit.worker")


class KatkitWorker:
    """The two workers of one host: the shared task queue (workflows and every activity) and the host's own queue
    (the activities that touch this host's builders, so a shard's retries come back here and re-attach)."""

    def __init__(self, shared: Worker, host: Worker) -> None:
        self.workers = (shared, host)

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.workers))

    async def __aenter__(self) -> KatkitWorker:
        for w in self.workers:
            await w.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(w.__aexit__(*exc) for w in self.workers))


def build_worker(client: Client, settings: Settings, executor: ThreadPoolExecutor) -> KatkitWorker:
    import_sdks()  # here, on one thread: activity threads importing a heavy SDK together can see it half-made
    activities = KatkitActivities(settings.home, log_store_for(settings), client=client, executor=executor,
                                  lock_watchdog_s=settings.lock_watchdog, ui_url=settings.ui_url,
                                  github_token=settings.github_token, host_queue=settings.host_queue)
    common = dict(
        activity_executor=executor,
        max_concurrent_activities=executor._max_workers,  # one thread for each activity that may run
        # a cancel reaches an activity only in the answer to a heartbeat: send them often enough that a
        # cancelled run's builders stop within a few seconds (the default throttle is 80% of the timeout)
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        identity=worker_identity(settings),
    )
    shared = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[CommitRun, DeployLock, Promotion],
        # the log formatter runs where the workflow logs: let it use the real structlog, not a sandboxed copy
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                "structlog", "rich", "pydantic", "pydantic_core", "annotated_types", "katkit", "activities")),
        activities=activities.all(),
        **common,
    )
    host = Worker(client, task_queue=settings.host_queue, activities=activities.host_bound(), **common)
    return KatkitWorker(shared, host)


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
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as executor:
            worker = build_worker(client, settings, executor)
            await warn_of_other_log_stores(client, settings)
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
