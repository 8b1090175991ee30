"""Platforms: where a tenant's services run. A small protocol; backends are imported lazily by type.

A deploy reads what runs now, then changes it: ``ExtraConfig`` (env vars) and ``Replicas`` always come
from the running service, never from the service description in the repository.
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, Field

from katkit.states import DeployKind


if TYPE_CHECKING:
    from katkit.config import TenantConfig


class RunningService(BaseModel):
    name: str
    image: str
    extra_config: str | None = None
    replicas: int = 1
    fields: dict[str, object] = Field(default_factory=dict)


class RecordedDecision(BaseModel):
    """An approval (or a freeze override) as the ledger keeps it: who, when, and what they said."""

    by: str
    at: datetime | None = None
    comment: str = ""
    verified_by: str = Field("", description="what proved who decided: 'ssh key SHA256:...', 'github LOGIN', "
                             "'unverified'; '' in records made before katkit checked")

    @property
    def verification(self) -> str:
        """``verified (ssh key SHA256:...)``, ``unverified``, or '' when the record does not say."""
        return "" if not self.verified_by else "unverified" if self.verified_by == "unverified" else \
            f"verified ({self.verified_by})"


class DeploymentRecord(BaseModel):
    """One deploy or rollback of a tenant service, as its ledger keeps it (what ``katkit history`` shows)."""

    run_id: str
    sha: str
    previous_image: str | None
    image: str
    replicas: int
    started_by: str
    approved_by: list[str] = Field(default_factory=list)
    at: datetime
    repo: str = ""
    kind: DeployKind = DeployKind.DEPLOY
    execution: str = Field("", description="the workflow run id of the run that deployed (a retry records once)")
    previous_revision: str | None = Field(None, description="ECS: the task definition the service ran before")
    revision: str | None = Field(None, description="ECS: the task definition it runs now")
    attempt: int = Field(1, description="the run's attempt that deployed (1 unless the run was retried)")
    approvals: list[RecordedDecision] = Field(default_factory=list, description="the accepted approvals, with comments")
    freeze_overrides: list[RecordedDecision] = Field(default_factory=list,
                                                     description="approvers who deployed through a freeze window")
    failed_phase: str = Field("", description="auto_rollback: the phase after the deploy that failed")
    ended_at: datetime | None = Field(None, description="when the platform had the new version running")


class Platform(Protocol):
    """Where a tenant's services run. Methods are sync (they call sync SDKs) and run on the worker's thread pool.

    Errors: ``BadInput`` for what will never work as given (a missing image or service), ``DeployFailed`` (an
    InfraError that is not retried by the platform itself) when the new version did not come up and the old one
    keeps serving, ``InfraError`` when the engine or API can't be reached (the activity retries).
    """

    def current(self, tenant: TenantConfig, service: str) -> RunningService | None:
        """What runs now (image, ExtraConfig, Replicas), or None when the service does not run on this platform.
        The deploy activity keeps ExtraConfig and Replicas from here: a deploy never takes them from the repo."""

    def deploy(
        self, tenant: TenantConfig, target: RunningService, record: DeploymentRecord,
        progress: Callable[[], None] = ...,
    ) -> DeploymentRecord:
        """Make ``target`` the running service and return ``record`` completed with what only the platform knows
        (Docker: the image that really ran before; ECS: the task definition revisions). The argument is not changed.

        Idempotent: a deploy resumed after a crash (the same target again) finishes the rollout instead of starting
        a second one. ``progress`` is called now and then while the rollout is waited for, so the activity
        heartbeats. The deployment history is the service's ledger in Temporal, written by the deploy activity from
        the returned record, never by a platform."""
