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


def build_worker(client: Client, settings: Settings, executor: ThreadPoolExecutor, task_queue: str | None = None) -> Worker:
    import_sdks()  # here, on one thread: activity threads importing a heavy SDK together can see it half-made
    activities = KatkitActivities(settings.home, log_store_for(settings), client=client, executor=executor,
                                  lock_watchdog_s=settings.lock_watchdog, ui_url=settings.ui_url,
                                  github_token=settings.github_token)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[CommitRun, DeployLock, Promotion],
        # the log formatter runs where the workflow logs: let it use the real structlog, not a sandboxed copy
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                "structlog", "rich", "pydantic", "pydantic_core", "annotated_types", "katkit", "activities")),
        activities=activities.all(),
        activity_executor=executor,
        max_concurrent_activities=executor._max_workers,  # one thread for each activity that may run
        # a cancel reaches an activity only in the answer to a heartbeat: send them often enough that a
        # cancelled run's builders stop within a few seconds (the default throttle is 80% of the timeout)
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )


async def run_worker(settings: Settings, client: Client | None = None, stop: asyncio.Event | None = None) -> None:
    client = client or await connect(settings)
    added = await ensure_search_attributes(client)
    if added:
        log.info("registered search attributes", names=added)
    reaper = asyncio.create_task(reap_forever(client, settings.home, settings.task_queue, settings.reap_interval))
    try:
        with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as executor:
            worker = build_worker(client, settings, executor)
            log.info("worker started", task_queue=settings.task_queue, address=settings.address, pid=os.getpid())
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
