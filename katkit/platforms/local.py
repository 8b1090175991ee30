"""The ``local`` platform: the running service is a record on disk; nothing runs.

``<root>/<tenant>/<service>.json`` holds ``{"current": RunningService, ...}`` (older versions kept the deployment
history there too: it is imported into the service's ledger once, and never written again).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from katkit.platforms import DeploymentRecord, RunningService
from katkit.platforms.history import ServiceRecords

if TYPE_CHECKING:
    from katkit.config import TenantConfig


class LocalPlatform:
    def __init__(self, root: Path) -> None:
        self.records = ServiceRecords(root)

    @classmethod
    def for_home(cls, home: Path) -> LocalPlatform:
        return cls(home / "services")

    def current(self, tenant: TenantConfig, service: str) -> RunningService | None:
        cur = self.records.load(tenant.name, service)["current"]
        return RunningService.model_validate(cur) if cur else None

    def put(self, tenant: str, service: RunningService) -> None:
        """Record a service as running (how a service that katkit did not deploy first appears)."""
        with self.records.update(tenant, service.name) as data:
            data["current"] = service.model_dump(mode="json")

    def deploy(self, tenant: TenantConfig, target: RunningService, record: DeploymentRecord,
               progress: Callable[[], None] = lambda: None) -> DeploymentRecord:
        with self.records.update(tenant.name, target.name) as data:
            data["current"] = target.model_dump(mode="json")
        return record
