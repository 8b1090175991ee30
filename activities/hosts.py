"""Worker hosts: which host's queue a shard goes to, and whether a host is still there."""

from __future__ import annotations

import structlog
from temporalio import activity

from katkit.models import PickHostInput

log = structlog.get_logger("katkit.activities")


def ping_queue(host_queue: str) -> str:
    """The queue a worker host answers ``ping_host`` on, whatever its other queues' load."""
    return f"{host_queue}/ping"


def installation_queue(task_queue: str) -> str:
    """The shared task queue of a worker host's own queue (``katkit@host`` -> ``katkit``): what labels name."""
    return task_queue.split("@", 1)[0]


@activity.defn(name="ping_host")
async def ping_host() -> str:
    """Answered at once by a live host (a worker of its own, async): a busy host is not a gone host."""
    return activity.info().task_queue.removesuffix("/ping")


class HostActivities:
    def __init__(self, host_queue: str | None) -> None:
        self.host_queue = host_queue  # this worker host's own task queue (None: shards go to the shared queue)

    @activity.defn(name="pick_host")
    def pick_host(self, inp: PickHostInput) -> str:
        """This worker host's task queue: where shards go when the host that had them did not come back."""
        log.info("taking over shards from a host that did not come back", why=inp.reason, host=self.host_queue)
        return self.host_queue or activity.info().task_queue
