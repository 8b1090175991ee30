"""Data that crosses the workflow/activity boundary and the starter API: all pydantic, all JSON.

One input model per call (``<Thing>Input`` / ``<Thing>Result``) so fields can be added without breaking
callers. Nothing here may hold a secret: these payloads are shown in the Temporal web UI.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from katkit.config import LinkConfig, TenantConfig, WebhookTarget
from katkit.platforms import RecordedDecision
from katkit.models_base import Model
from katkit.states import DeployKind, Outcome, State
from katkit.service_models import (  # noqa: F401 - re-exported: katkit.models is where payloads are found
    LockRequest as LockRequest,
    LockGrant as LockGrant,
    LockEntry as LockEntry,
    LockState as LockState,
    FreezeEntry as FreezeEntry,
    FreezeState as FreezeState,
    UnfreezeInput as UnfreezeInput,
    FreezeCheckInput as FreezeCheckInput,
    FreezeCheck as FreezeCheck,
    LedgerRecord as LedgerRecord,
    ClosedRunsInput as ClosedRunsInput,
)


class PhaseType(StrEnum):
    EXECUTION = "execution"
    DEPLOYMENT = "deployment"


class Phase(Model):
    """One phase of a tenant's workflow, read from katkitconfig.js."""

    name: str
    type: PhaseType
    order: int = 0
    parallelism: int = 1
    build_params: dict[str, str] = Field(default_factory=dict)
    image: str | None = None


class ServiceDescription(Model):
    """servicedescription/servicedescription.js: ``Name`` and ``DockerImage`` plus everything else, kept as is."""

    name: str
    docker_image: str
    fields: dict[str, object] = Field(default_factory=dict, description="the whole file, passed through")

    def image_for(self, sha: str) -> str:
        return self.docker_image.replace("<hubtag>", sha)


class RunPlan(Model):
    """What the checkout activity read from the repository at the run's sha."""

    sha: str
    env_entry: str = Field(description="the katkitconfig.js EnvName entry chosen: the tenant's ENV or 'default'")
    local_fleet: bool = False
    phases: list[Phase]
    service: ServiceDescription | None = None
    host_queue: str | None = Field(None, description="the task queue of the worker host that read the plan")

    def first_prepared(self, depth: int) -> list[Phase]:
        """The execution phases the run starts with, at most ``depth``, up to its first deployment phase: those whose
        builders the checkout's host prepares once it has read the plan (``CheckoutInput.prepare_ahead``)."""
        first = []
        for phase in self.phases[:max(depth, 0)]:
            if phase.type != PhaseType.EXECUTION:
                break
            first.append(phase)
        return first


class CommitRunInput(Model):
    """Start one commit of one link in one tenant. Config is resolved by the starter, so a run is self-contained."""

    tenant: TenantConfig
    link: LinkConfig | None = Field(None, description="None only for a rollback whose repository is not linked now")
    sha: str = Field("", description="'' only for a rollback to an image whose commit the ledger does not know")
    ref: str = Field("", description="what the user asked for, e.g. 'branch main' or 'pr 12'")
    started_by: str
    rollback: RollbackSpec | None = None
    attempt: int = Field(1, description="which execution of the run this is (katkit retry starts the next)")
    retry: RetrySpec | None = Field(None, description="katkit retry: the phases of an earlier attempt it reuses")
    untrusted: bool = Field(False, description="a pull request from a fork: no secrets, no GitHub token for ci.sh")

    @property
    def repo(self) -> str:
        return self.link.repo if self.link else self.rollback.repo if self.rollback else ""


class RetrySpec(Model):
    """A retry of a run: from which phase it runs again, and the succeeded execution phases before it that it reuses
    (their states, shards and log keys, as the earlier attempt left them). A deployment phase is never reused."""

    from_attempt: int
    from_phase: str
    reuse: list[PhaseState] = Field(default_factory=list)


class CheckoutInput(Model):
    link: LinkConfig
    env: str
    sha: str
    tenant: TenantConfig | None = Field(None, description="when given, the tenant's builder images are checked too")
    prepare_ahead: int = Field(0, description="how many of the plan's first execution phases this host prepares the "
                                              "builders of once it has read the plan (``first_prepared``)")
    untrusted: bool = Field(False, description="a fork's pull request (as ShardInput.untrusted), for those builders")
    ref: str = Field("", description="as ShardInput.ref, for those builders")


class PrepareAhead(Model):
    """A phase whose builders the host prepares while a shard of the phase before runs (pipelining)."""

    phase: Phase
    deadline: datetime = Field(description="when the phase before it would have timed out: its builders wait that "
                                           "long (and a grace) to be told to start")


class ShardInput(Model):
    run_id: str = Field(description="the workflow id (KATKIT_RUN_ID)")
    attempt_key: str = Field(description="unique per workflow execution, so a re-run gets fresh builders")
    tenant: TenantConfig
    link: LinkConfig
    sha: str
    phase: Phase
    shard_index: int
    local_fleet: bool = False
    deadline: datetime = Field(description="when ci.sh is killed and the shard fails (the phase timeout)")
    generation: int = Field(0, description="how often the shard started afresh on another host (a new builder each)")
    log_note: str = Field("", description="a line the log starts with (why the shard started afresh)")
    untrusted: bool = Field(False, description="a fork's pull request: no secrets, no GitHub token (unless the tenant "
                                               "opts in)")
    ref: str = Field("", description="what the run was started from ('branch B', 'pr N', 'sha S'): the cache's branch")
    prepare: list[PrepareAhead] = Field(default_factory=list, description="phases ahead whose builders this shard's "
                                        "host prepares once this shard's ci.sh has started")


class PrepareResult(Model):
    """A builder prepared ahead of its phase (``prepare_builder``): its name, for the history and the UI."""

    builder: str


class PickHostInput(Model):
    reason: str = ""


class RemoveBuilderInput(Model):
    tenant: TenantConfig
    builder: str


class ShardResult(Model):
    builder: str
    exit_code: int
    log_key: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reattached: bool = False
    message: str = ""
    summary: str = Field("", description="one line for the web UI, e.g. 'UNIT_TEST shard 1/2: ci.sh exited 0 in 4.2 s'")
    log_tail: str = Field("", description="a failed shard's last log lines (what its run's page shows)")


class DeployInput(Model):
    run_id: str
    execution: str = Field("", description="the workflow run id of the deploying run (lock identity)")
    tenant: TenantConfig
    kind: DeployKind
    service: str = Field(description="the service's Name")
    image: str = Field(description="what runs once the deploy is done")
    sha: str = Field("", description="the commit the image was built from ('' when a rollback's is unknown)")
    repo: str = ""
    description: ServiceDescription | None = Field(
        None, description="a deploy: servicedescription.js at the sha (its settings apply to a service not yet running); "
                          "a rollback: None (the running service's settings are kept)")
    started_by: str
    approved_by: list[str] = Field(default_factory=list)
    approvals: list[RecordedDecision] = Field(default_factory=list, description="accepted approvals, with comments")
    freeze_overrides: list[RecordedDecision] = Field(default_factory=list, description="who broke a freeze for this run")
    attempt: int = Field(1, description="the run's attempt (1 unless retried)")
    failed_phase: str = Field("", description="auto_rollback: the phase after the deploy that failed")

    @model_validator(mode="before")
    @classmethod
    def _recorded_before_kind(cls, data: object) -> object:
        """Inputs recorded by katkit before ``kind`` (in a history, or a deploy in flight across an upgrade) carried
        the whole ServiceDescription as ``service`` and an ``image`` only for a rollback."""
        if isinstance(data, dict) and "kind" not in data and isinstance(data.get("service"), dict):
            desc = ServiceDescription.model_validate(data["service"])
            data = {**data, "kind": DeployKind.ROLLBACK if data.get("image") else DeployKind.DEPLOY,
                    "service": desc.name, "image": data.get("image") or desc.image_for(str(data.get("sha", ""))),
                    "description": None if data.get("image") else desc}
        return data


class DeployResult(Model):
    service: str
    image: str
    previous_image: str | None = None
    replicas: int
    env_names: list[str] = Field(default_factory=list, description="the env vars (ExtraConfig) kept, by name: their "
                                 "values may be secrets and are never in history")
    deployed_at: datetime
    lock_waited_s: float = Field(0.0, description="how long the deploy waited for the tenant service's deploy lock")
    started_at: datetime | None = Field(None, description="when the deploy itself began (lock held)")


class DecisionProof(Model):
    """What proves who decided: an SSH signature (``katkit approve --key``) of the decision with its run, sha and tenant
    (``katkit.proof.decision_message``)."""

    signature: str = Field(description="the armored SSHSIG signature (ssh-keygen -Y sign -n katkit)")
    signed_at: datetime = Field(description="when it was signed (part of the signed message)")
    key: str = Field("", description="the signing key's fingerprint, SHA256:... (informative; the signature holds the key)")
    github: str = Field("", description="a decision from a GitHub comment: the commenter's login, vouched for by "
                        "`katkit webhook`'s signature (the tenant's approval.webhook_key)")


class DecisionInput(Model):
    """Input of the ``approve`` / ``reject`` signals: ``{"by": "alice", "comment": "..."}``."""

    by: str = ""
    comment: str = ""
    reason: str = ""
    proof: DecisionProof | None = Field(None, description="a signature proving the decision is by's (see DecisionProof)")


class Decision(Model):
    kind: Literal["approve", "reject", "timeout", "override_freeze"]
    by: str
    at: datetime
    text: str = ""
    accepted: bool = True
    refused_because: str = ""
    verified_by: str = Field("unverified", description="what proved who decided: 'ssh key SHA256:...', "
                             "'github LOGIN', or 'unverified'; '' for a timeout")

    @property
    def verification(self) -> str:
        """``verified (ssh key SHA256:...)``, ``verified (github LOGIN)``, ``unverified``, or '' for a timeout."""
        if self.kind == "timeout" or not self.verified_by:
            return ""
        return "unverified" if self.verified_by == "unverified" else f"verified ({self.verified_by})"


class ShardState(Model):
    index: int
    state: State = State.PENDING
    message: str = Field("", description="why it ended so, when that is not its own doing (another shard failed)")
    exit_code: int | None = None
    log_key: str = ""
    duration_s: float | None = None
    reattached: bool = Field(False, description="a retried activity found this shard's builder and re-attached to it")
    generation: int = Field(0, description="how often it started afresh because its host did not come back")
    host: str = Field("", description="the task queue of the worker host that runs its builder")
    log_tail: str = Field("", description="a failed shard's last log lines")

    @model_validator(mode="before")
    @classmethod
    def _recorded_with_reason(cls, data: object) -> object:
        """Older runs wrote the reason into the state: 'cancelled (another shard failed)'."""
        if isinstance(data, dict) and isinstance(data.get("state"), str) and " (" in data["state"]:
            state, _, why = data["state"].partition(" (")
            data = {**data, "state": state, "message": data.get("message") or why.rstrip(")")}
        return data


class PhaseState(Model):
    name: str
    type: PhaseType
    order: int
    parallelism: int = 1
    state: State = State.PENDING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    shards: list[ShardState] = Field(default_factory=list)
    message: str = ""
    reused_from: int = Field(0, description="katkit retry: the attempt whose result this phase reuses (0: it ran)")


class ApprovalState(Model):
    required: bool = False
    approvers: list[str] = Field(default_factory=list)
    min_approvals: int = 1
    allow_self_approval: bool = False
    require_proof: bool = Field(False, description="decisions must be signed by the approver's key")
    awaiting: bool = False
    since: datetime | None = None
    approved_by: list[str] = Field(default_factory=list)
    outcome: Outcome | Literal[""] = Field("", description="approved, rejected, timed_out or '' while undecided")
    deploy_not_before: datetime | None = Field(None, description="the end of the tenant's wait timer")
    decisions: list[Decision] = Field(default_factory=list)


class FreezeStatus(Model):
    """A run's deploy and the tenant's freezes: what held it (or failed it), and who broke the glass."""

    frozen_until: datetime | None = Field(None, description="while the deploy waits: when the freeze ends")
    reason: str = ""
    by: str = Field("", description="who set the freeze ('' for a recurring window of katkit.yaml)")
    waited_s: float = Field(0.0, description="how long the deploy waited for freezes to end")
    overrides: list[Decision] = Field(default_factory=list, description="approvers who let it deploy through a freeze")


class RunStatus(Model):
    """What the ``status`` query returns and what a finished run's result holds."""

    run_id: str
    tenant: str
    env: str
    repo: str
    sha: str
    ref: str = ""
    started_by: str
    attempt: int = Field(1, description="which execution of the run this is (katkit retry)")
    status: State = State.RUNNING
    phase: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    phases: list[PhaseState] = Field(default_factory=list)
    approval: ApprovalState = Field(default_factory=ApprovalState)
    deployed: DeployResult | None = None
    freeze: FreezeStatus = Field(default_factory=FreezeStatus)
    rolled_back: DeployResult | None = Field(None, description="on_post_deploy_failure: rollback: the previous image, "
                                                               "put back after a phase after the deploy failed")
    error: str = ""
    note: str = Field("", description="set by the starter, never by the workflow: e.g. that no worker polls")
    untrusted: bool = Field(False, description="a fork's pull request: its ci.sh gets no secrets and no GitHub token")


class RollbackSpec(Model):
    """A run that only redeploys an image from the deployment history, through the same gate and lock."""

    service: str
    image: str
    sha: str = Field("", description="the commit the image was built from, when the ledger knows it")
    repo: str = Field("", description="the repository the image was built from, when the ledger knows it")


class NotifyInput(Model):
    urls: list[str] = Field(default_factory=list, description="plain URLs (inputs recorded before targets)")
    targets: list[WebhookTarget] = Field(default_factory=list, description="references are resolved by the worker")
    event: dict[str, object]


class PromotionInput(Model):
    link: LinkConfig
    sha: str
    tenants: list[TenantConfig]
    started_by: str


class PromotionStep(Model):
    tenant: str
    run_id: str
    status: State = State.PENDING
    error: str = ""
    image: str = ""


class PromotionStatus(Model):
    promotion_id: str
    repo: str
    sha: str
    started_by: str
    status: State = State.RUNNING
    current: str = ""
    steps: list[PromotionStep] = Field(default_factory=list)
    note: str = Field("", description="set by the starter, never by the workflow: e.g. that no worker polls")

CommitRunInput.model_rebuild()
RetrySpec.model_rebuild()


class GitHubUpdate(Model):
    """One thing to tell GitHub, in the order the run did it."""

    kind: Literal["status", "deployment", "deployment_status"]
    state: str = Field("", description="status: pending success failure error; deployment: queued in_progress ...")
    context: str = Field("", description="the commit status's context: katkit/<tenant>/<phase>")
    description: str = ""
    environment: str = Field("", description="the deployment's environment")
    production: bool = False


class GitHubReportInput(Model):
    link: LinkConfig
    sha: str
    run_id: str
    execution: str = Field(description="the workflow execution: one deployment per execution, found again on retry")
    updates: list[GitHubUpdate]
    deployment_id: int | None = None


class GitHubReportResult(Model):
    deployment_id: int | None = None
    sent: int = 0


class PullInfo(Model):
    number: int
    title: str
    author: str
    sha: str
    branch: str
    url: str = ""
    runs: dict[str, str] = Field(default_factory=dict, description="tenant -> status of the latest katkit run of the sha")
