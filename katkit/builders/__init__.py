"""Builders: where one phase shard's agent runs. A small protocol; backends are imported lazily by type.

A builder is named from run, execution, phase and shard, so starting it again re-attaches instead of
starting a second one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from katkit.config import TenantConfig


PREPARED_LABEL = "katkit.prepared"
"""On a builder made ready while the phase before ran (``Builder.prepare``); its other labels are a started one's."""


class BuilderSpec(BaseModel):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    repo_url: str
    sha: str
    folder: str = ""
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    image: str | None = None
    local_fleet: bool = False
    mirror_path: str | None = Field(None, description="the worker's bare mirror of the repository, if on this host")
    cache_scope: str = Field("", description="tenant/repo/branch whose cache the builder restores and saves ('' none)")
    cache_paths: list[str] = Field(default_factory=list, description="the tenant's cache paths ('~/x' or checkout-relative)")
    cache_save: bool = Field(True, description="save the cache after a shard that succeeded (not for untrusted code)")
    trusted: bool = Field(True, description="False for a fork's pull request: no engine socket, nothing shared")
    ready_for_s: float = Field(3600.0, description="how long a builder prepared in advance waits to be told to start")
    first_try: bool = Field(False, description="no earlier call can have started this builder (the activity's first "
                                               "attempt): a prepared one need not be asked whether it was told already")


class BuilderState(BaseModel):
    running: bool
    exit_code: int | None = None
    reason: str = ""


class Builder(Protocol):
    """Where one phase shard's agent runs: the local process, a Docker container or an ECS task, by name.

    The run_shard activity drives it: ``start``, then in a loop ``state``, ``read_log`` until a short read, and
    ``wait`` until ``state`` says it is no longer running, then ``remove``. Methods block (they run in activity
    threads). Use one instance for one builder from start to end: the Docker and ECS builders keep their read
    position in the log in the instance, and their ``state`` depends on it.
    """

    def start(self, spec: BuilderSpec) -> bool:
        """Start a builder named ``spec.name`` that runs the agent on ``spec``; True when this call started it.

        Idempotent by name: when a builder of that name exists already, running or exited (a retried activity,
        a restarted worker), nothing new starts and the answer is False (re-attached; Docker starts a container
        that was created but never started). Raises BadInput when it cannot start as specified (its image is
        missing, the ECS task definition is not registered, ECS placed no task) and InfraError when the engine
        fails.
        """

    def prepare(self, spec: BuilderSpec) -> None:
        """Make the builder ``spec.name`` ready to run without starting ci.sh (pipelining: while the phase before
        runs). Local and Docker: the agent is started and checks out the sha, then waits up to ``spec.ready_for_s``
        to be told to start (``go`` in katkit/agent.py); ECS: nothing. ``spec.env`` holds no secret here: ``start``
        brings ci.sh's whole environment with the word to start, never through a file, an argument or the
        container's configuration. Labelled as ``start`` would (and ``katkit.prepared``), so ``list`` and the reaper
        see it. Idempotent; a later ``start`` of the same name tells it to start ci.sh (and answers True); one never
        told in time, or gone while it waited, is made anew by ``start``; ``remove`` removes it."""

    def state(self, name: str) -> BuilderState:
        """Whether the builder still runs, and once it does not, how it ended.

        ``running`` stays True until the builder has exited and its log is complete: from then on ``read_log``
        returns the rest of the log, if anything is left. The Docker and ECS builders say so only once this
        instance's ``read_log`` has read the log to its end, so a caller must keep reading while it waits.
        When it is False, ``exit_code`` is the agent's exit code (ci.sh's; 255 when the agent could not run ci.sh;
        Docker reports 137 and 143 as a SIGKILL or SIGTERM from outside) and ``reason`` says it in words.
        ``exit_code`` is None, with a ``reason``, when the builder ended without one: it does not exist (removed
        or never started), its process was killed before the agent recorded the exit, or its ECS task stopped
        before the agent's container exited.
        """

    def wait(self, name: str, timeout: float) -> None:
        """Block until the builder may have changed state or about ``timeout`` seconds pass (ECS: at least its
        poll interval). It may return early or just sleep: callers check ``state`` and read the log again."""

    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the builder's log from byte ``offset`` (b"" for a builder that does not exist).

        Fewer bytes, even none, mean only that no more has arrived yet: ``state`` tells when the log is complete.
        Reading on from where the last read ended is cheap; Docker and ECS serve another offset by reading the
        log again from an earlier point and skipping to it.
        """

    def remove(self, name: str, progress: Callable[[], None] = ...) -> None:
        """Stop the builder if it still runs and remove it (local: its directory, moved aside and deleted in the
        background; Docker: its container; ECS: the task is stopped). Idempotent: a builder that is gone already,
        or never existed, is no error.

        How it stops depends on the backend. Local: SIGTERM to the agent's process group, SIGKILL to what is left
        after the worker's stop grace (``KATKIT_STOP_GRACE``), and ``progress`` is called about once a second
        meanwhile (the activity heartbeats). Docker: the container is removed with force (killed at once). ECS:
        StopTask, which does not wait (ECS sends SIGTERM, then SIGKILL after the task definition's stop timeout).
        """

    def list(self) -> dict[str, dict[str, str]]:
        """The builders of this backend that this instance can see, by name, with the labels of their spec
        (Docker and ECS add a ``katkit.builder`` label; {} for a local builder whose spec cannot be read). The
        orphan reaper reads them (``katkit.run``, ``katkit.execution``, ``katkit.phase``, ``katkit.shard``,
        ``katkit.generation``, ``katkit.namespace``, ``katkit.task_queue``) and removes the builders of its own
        installation whose run is closed or whose shard started afresh on another host. Local and Docker list
        exited builders too; ECS lists the tasks still meant to run."""

    def check_image(self, image: str | None) -> None:
        """Raise BadInput unless a phase could start with ``image`` (None: the default builder image), and
        InfraError when the engine cannot be asked. Docker: the image must be on the engine. ECS: no image may
        be named (RunTask cannot override it) and the builder task definition must be registered. Local: any
        image is accepted (ignored)."""


def builder_name(run_id: str, attempt_key: str, phase: str, shard: int, generation: int = 0) -> str:
    """``katkit-<readable run>-<phase>-<shard>-<hash>``: readable, unique per execution (and per generation: a shard
    started afresh on another host gets a new builder), stable across retries."""
    key = f"{attempt_key}\0{phase}\0{shard}" + (f"\0{generation}" if generation else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{run_id}".lower()).strip("-")[:40]
    pslug = re.sub(r"[^a-z0-9]+", "-", phase.lower()).strip("-")[:20]
    return f"katkit-{slug}-{pslug}-{shard}-{digest}"


def _safe_part(part: str) -> str:
    """A path or volume name part: [A-Za-z0-9_-], with a hash of the original when anything had to change."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", part).strip("-")[:60] or "x"
    return safe if safe == part else f"{safe}-{hashlib.sha256(part.encode()).hexdigest()[:8]}"


def cache_scope(tenant: str, repo: str, branch: str) -> str:
    """``<tenant>/<repo>/<branch>`` with each part a safe name (``feature/x`` -> ``feature-x-<hash>``): where a
    cache lives under ``$KATKIT_HOME/cache/`` and what names its Docker volume."""
    return "/".join(_safe_part(p) for p in (tenant, repo, branch))


def cache_volume(scope: str) -> str:
    """The Docker volume of a cache scope: ``katkit-cache-<tenant>-<repo>-<branch>-<hash>`` (unique per scope)."""
    return f"katkit-cache-{scope.replace('/', '-')[:150]}-{hashlib.sha256(scope.encode()).hexdigest()[:8]}"


def builder_for(tenant: TenantConfig, home: Path) -> Builder:
    from katkit.backends import get_builder

    return get_builder(tenant.builder, home, tenant)
