"""Per-host JSON files of tenant services: the local platform's running service, and the deployment history
that versions before the ledger kept there (read once, to import it into the service's ledger)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from katkit.names import inside
from katkit.platforms import DeploymentRecord


class ServiceRecords:
    """``<root>/<tenant>/<service>.json``: ``{"current": ..., "history": [...]}``, updated under a file lock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, tenant: str, service: str) -> Path:
        return inside(self.root, tenant, f"{service}.json")

    def load(self, tenant: str, service: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._path(tenant, service).read_text())
            return data
        except FileNotFoundError:
            return {"current": None}

    @contextmanager
    def update(self, tenant: str, service: str) -> Iterator[dict[str, Any]]:
        """Yield the record to change in place; it is written back atomically when the block ends."""
        path = self._path(tenant, service)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load(tenant, service)
            yield data
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, path)

    def history(self, tenant: str, service: str) -> list[DeploymentRecord]:
        """The JSON history of older versions (empty when there is none)."""
        return [DeploymentRecord.model_validate(r) for r in self.load(tenant, service).get("history", [])]

    def services(self, tenant: str) -> list[str]:
        """Services of ``tenant`` with a file here."""
        folder = self.root / tenant
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
