"""The backends, by the kind a tenant names (``builder:`` and ``platform:`` in katkit.yaml): one table each, used
to build them for a tenant and by the orphan reaper. Classes are imported on first use, so boto3 or docker-py
load only where a tenant needs them.

A builder class has ``for_tenant(tenant, home)`` and ``on_this_host(home)`` (the builders this worker host can
list for the reaper); a platform class has ``for_home(home)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from katkit.errors import BadInput

if TYPE_CHECKING:
    from katkit.builders import Builder
    from katkit.config import TenantConfig
    from katkit.platforms import Platform

BUILDERS = {
    "local": "katkit.builders.local:LocalBuilder",
    "docker": "katkit.builders.docker:DockerBuilder",
    "ecs": "katkit.builders.ecs:EcsBuilder",
}
PLATFORMS = {
    "local": "katkit.platforms.local:LocalPlatform",
    "docker": "katkit.platforms.docker:DockerPlatform",
    "ecs": "katkit.platforms.ecs:EcsPlatform",
}


def _load(table: dict[str, str], kind: str, what: str) -> Any:
    if kind not in table:
        raise BadInput(f"{what} {kind!r} is not available in this version; use one of {', '.join(table)}")
    module, name = table[kind].split(":")
    return getattr(importlib.import_module(module), name)


def get_builder(kind: str, home: Path, tenant: TenantConfig | None = None) -> Builder:
    builder: Builder = _load(BUILDERS, kind, "builder").for_tenant(tenant, home)
    return builder


def get_platform(kind: str, home: Path) -> Platform:
    platform: Platform = _load(PLATFORMS, kind, "platform").for_home(home)
    return platform


def builders_on_this_host(home: Path) -> list[Builder]:
    """Every builder backend's view from this worker host, for the orphan reaper (those it cannot reach: none)."""
    found: list[Builder] = []
    for kind in BUILDERS:
        found += _load(BUILDERS, kind, "builder").on_this_host(home)
    return found
