"""The ``local`` platform: service records on disk with their deployment history; nothing runs.

``<root>/<tenant>/<service>.json`` holds ``{"current": RunningService, "history": [DeploymentRecord]}``.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from katkit.platforms import DeploymentRecord, RunningService

if TYPE_CHECKING:
    from katkit.config import TenantConfig
    from katkit.models import ServiceDescription


class LocalPlatform:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, tenant: str, service: str) -> Path:
        return self.root / tenant / f"{service}.json"

    def _load(self, tenant: str, service: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(tenant, service).read_text())
        except FileNotFoundError:
            return {"current": None, "history": []}

    @contextmanager
    def _locked(self, tenant: str, service: str) -> Iterator[Path]:
        path = self._path(tenant, service)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path

    def current(self, tenant: TenantConfig, service: str) -> RunningService | None:
        cur = self._load(tenant.name, service)["current"]
        return RunningService.model_validate(cur) if cur else None

    def put(self, tenant: str, service: RunningService) -> None:
        """Record a service as running (how a service that katkit did not deploy first appears)."""
        with self._locked(tenant, service.name) as path:
            data = self._load(tenant, service.name)
            data["current"] = service.model_dump(mode="json")
            self._write(path, data)

    def deploy(
        self, tenant: TenantConfig, desc: ServiceDescription, target: RunningService, record: DeploymentRecord
    ) -> None:
        with self._locked(tenant.name, target.name) as path:
            data = self._load(tenant.name, target.name)
            data["current"] = target.model_dump(mode="json")
            data["history"].append(record.model_dump(mode="json"))
            self._write(path, data)

    def history(self, tenant: TenantConfig, service: str) -> list[DeploymentRecord]:
        return [DeploymentRecord.model_validate(r) for r in self._load(tenant.name, service)["history"]]

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
