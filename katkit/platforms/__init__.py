"""Platforms: where a tenant's services run. A small protocol; backends are imported lazily by type.

A deploy reads what runs now, then changes it: ``ExtraConfig`` (env vars) and ``Replicas`` always come
from the running service, never from the service description in the repository.
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, Field


if TYPE_CHECKING:
    from katkit.config import TenantConfig
    from katkit.models import ServiceDescription


class RunningService(BaseModel):
    name: str
    image: str
    extra_config: str | None = None
    replicas: int = 1
    fields: dict[str, object] = Field(default_factory=dict)


class DeploymentRecord(BaseModel):
    run_id: str
    sha: str
    previous_image: str | None
    image: str
    replicas: int
    started_by: str
    approved_by: list[str] = Field(default_factory=list)
    at: datetime
    repo: str = ""
    kind: str = Field("deploy", description="deploy or rollback")
    execution: str = Field("", description="the workflow run id of the run that deployed (a retry records once)")
    previous_revision: str | None = Field(None, description="ECS: the task definition the service ran before")
    revision: str | None = Field(None, description="ECS: the task definition it runs now")


class Platform(Protocol):
    def current(self, tenant: TenantConfig, service: str) -> RunningService | None: ...

    def deploy(
        self, tenant: TenantConfig, desc: ServiceDescription, target: RunningService, record: DeploymentRecord,
        progress: Callable[[], None] = ...,
    ) -> None:
        """Make ``target`` the running service; call ``progress`` while waiting. The deployment history is the
        service's ledger in Temporal (kept by the deploy activity), never a platform's: a platform only fills in
        what it alone knows on ``record`` (ECS: the task definition revisions)."""
