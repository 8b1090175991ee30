"""What a tenant service's DeployLock and a tenant's TenantFreezes keep and answer: the lock queue, the ledger's
records, freezes and their checks. Re-exported by ``katkit.models``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from katkit.config import TenantConfig
from katkit.models_base import Model
from katkit.platforms import DeploymentRecord


class LockRequest(Model):
    tenant: str
    service: str
    run_id: str
    execution: str = ""
    policy: str = "queue"
    can_queue: bool = Field(False, description="the caller asks again when told it is queued (LockGrant.queued)")


class LockGrant(Model):
    granted: bool
    superseded_by: str = ""
    waited_s: float = 0.0
    last: DeploymentRecord | None = Field(None, description="the service's last deployment, from its ledger")
    imported: bool = Field(True, description="False until the service's JSON history of older versions was imported")
    queued: bool = Field(False, description="not granted yet, and not waited for inside the lock (too many wait there "
                                            "already): the caller keeps its place in the queue and asks again soon")
    position: int = Field(0, description="queued: how many wait before it (it asks again sooner the closer it is)")


class LockEntry(Model):
    run_id: str
    execution: str = ""
    since: datetime


class LockState(Model):
    tenant: str
    service: str
    policy: str = "queue"
    holder: LockEntry | None = None
    waiters: list[LockEntry] = Field(default_factory=list)
    superseded: dict[str, str] = Field(default_factory=dict)
    withdrawn: list[str] = Field(default_factory=list)
    grants: int = 0
    watchdog_s: float = Field(30.0, description="how often the holder and waiters are checked for closed runs")
    records: list[DeploymentRecord] = Field(default_factory=list, description="the service's ledger: its last deployments")
    imported: bool = Field(False, description="whether the JSON history of older versions has been imported")


class FreezeEntry(Model):
    """A freeze of a tenant's deploys: an ad hoc one (``katkit freeze``) or a recurring window of katkit.yaml."""

    tenant: str
    until: datetime
    reason: str = ""
    by: str = Field("", description="who set it ('' for a recurring window)")
    set_at: datetime | None = None
    source: Literal["adhoc", "window"] = "adhoc"
    window: str = Field("", description="a recurring window: its cron start and time zone")
    in_force: bool = Field(True, description="a recurring window: whether it is open now")
    next_start: datetime | None = Field(None, description="a recurring window not open now: when it opens next")


class FreezeState(Model):
    """A tenant's TenantFreezes workflow: its ad hoc freezes and the runs whose deploys wait for them."""

    tenant: str
    freezes: list[FreezeEntry] = Field(default_factory=list)
    waiters: list[str] = Field(default_factory=list, description="runs told when a freeze is lifted")
    lifted: list[FreezeEntry] = Field(default_factory=list, description="the last freezes lifted early, 'by' who lifted")


class UnfreezeInput(Model):
    by: str


class FreezeCheckInput(Model):
    tenant: TenantConfig
    run_id: str = Field(description="a run told when an ad hoc freeze is lifted, while it waits")


class FreezeCheck(Model):
    """Whether a tenant is frozen now: the freeze that lasts longest, or None."""

    freeze: FreezeEntry | None = None


class LedgerRecord(Model):
    """A deployment for a tenant service's ledger, with the old JSON history the first time (imported once)."""

    record: DeploymentRecord
    legacy: list[DeploymentRecord] = Field(default_factory=list)


class ClosedRunsInput(Model):
    executions: list[tuple[str, str]] = Field(default_factory=list, description="(workflow id, run id) pairs")
