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


class BuilderState(BaseModel):
    running: bool
    exit_code: int | None = None
    reason: str = ""


class Builder(Protocol):
    def start(self, spec: BuilderSpec) -> bool:
        """Start the builder; False when one of that name exists already (re-attached, not started again)."""

    def state(self, name: str) -> BuilderState: ...

    def wait(self, name: str, timeout: float) -> None:
        """Block until the builder may have changed state or ``timeout`` seconds pass (a sleep is a valid answer)."""

    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        """Log bytes from ``offset``; what the builder wrote so far, complete once it has exited."""

    def remove(self, name: str, progress: Callable[[], None] = ...) -> None:
        """Stop the builder if it runs and delete it. Idempotent. ``progress`` is called now and then while a stop
        takes long (a grace period), so the activity can heartbeat."""

    def list(self) -> dict[str, dict[str, str]]:
        """Every builder of this backend, by name, with its labels (for the orphan reaper)."""

    def check_image(self, image: str | None) -> None:
        """Raise BadInput unless a phase could start with ``image`` (None: the default builder image)."""


def builder_name(run_id: str, attempt_key: str, phase: str, shard: int, generation: int = 0) -> str:
    """``katkit-<readable run>-<phase>-<shard>-<hash>``: readable, unique per execution (and per generation: a shard
    started afresh on another host gets a new builder), stable across retries."""
    key = f"{attempt_key}\0{phase}\0{shard}" + (f"\0{generation}" if generation else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{run_id}".lower()).strip("-")[:40]
    pslug = re.sub(r"[^a-z0-9]+", "-", phase.lower()).strip("-")[:20]
    return f"katkit-{slug}-{pslug}-{shard}-{digest}"


def builder_for(tenant: TenantConfig, home: Path) -> Builder:
    from katkit.backends import get_builder

    return get_builder(tenant.builder, home, tenant)
