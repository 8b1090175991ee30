"""The parts of a tenant in katkit.yaml: its approval policy and approvers, Docker and ECS settings, secrets and
webhook targets, GitHub behaviour and freeze windows. ``katkit.config.TenantConfig`` puts them together."""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator

from katkit.config_base import Duration, Strict
from katkit.proof import ProofError, public_key_blob  # at import: the workflow sandbox validates configs too


class Approver(Strict):
    """An approver who can prove a decision: SSH public keys they sign with, and/or their GitHub login."""

    name: str = Field(min_length=1)
    keys: list[str] = Field(default_factory=list, description="OpenSSH public key lines (ssh-ed25519) they sign with")
    github: str | None = Field(None, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$", description="their GitHub login")

    @model_validator(mode="after")
    def _keys_readable(self) -> Approver:
        for i, key in enumerate(self.keys):
            try:
                public_key_blob(key)
            except ProofError as exc:
                raise ValueError(f"approver {self.name!r} keys.{i}: {exc}") from None
        return self


def _approver_entries(data: object) -> object:
    """``approvers`` may mix names and ``{name, keys, github}`` entries: the names stay in ``approvers`` (what status,
    webhooks and the UI show), the entries with keys or a GitHub login go to ``identities``."""
    if not isinstance(data, dict) or not isinstance(data.get("approvers"), list) \
            or not isinstance(data.get("identities", []), list):
        return data  # pydantic says what is wrong with them
    names: list[object] = []
    identities: list[object] = list(data.get("identities", []))
    for i, entry in enumerate(data["approvers"]):
        if isinstance(entry, dict):
            try:
                approver = Approver.model_validate(entry)
            except ValidationError as exc:
                e = exc.errors()[0]
                where = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    raise ValueError(f"approvers.{i}: unknown field {where!r}; an approver has name, keys and github") from None
                raise ValueError(f"approvers.{i}{'.' + where if where else ''}: "
                                 f"{e['msg'].removeprefix('Value error, ')}") from None
            names.append(approver.name)
            identities.append(approver)
        else:
            names.append(entry)
    return {**data, "approvers": names, "identities": identities}


class ApprovalPolicy(Strict):
    required: bool = False
    approvers: list[str] = Field(default_factory=list, description="who may decide; empty: anyone")
    identities: list[Approver] = Field(default_factory=list, description="approvers' keys and GitHub logins (filled "
                                       "from the {name, keys, github} entries of approvers)")
    require_proof: bool = Field(False, description="a decision must be signed by the approver's key (or come from "
                                "their GitHub login); unsigned ones are refused")
    webhook_key: str | None = Field(None, description="the public key (ssh-ed25519) `katkit webhook` signs decisions "
                                    "from GitHub comments with (its private half: KATKIT_WEBHOOK_SIGNING_KEY)")
    min_approvals: int = Field(1, ge=1, description="distinct approvals needed (quorum)")
    allow_self_approval: bool = False
    timeout: Duration | None = None
    on_timeout: Literal["reject", "cancel"] = "reject"
    wait_timer: Duration | None = Field(None, description="the deployment starts no sooner than this after the gate opened")

    @model_validator(mode="before")
    @classmethod
    def _entries(cls, data: object) -> object:
        return _approver_entries(data)

    @model_validator(mode="after")
    def _quorum_possible(self) -> ApprovalPolicy:
        if self.approvers and self.min_approvals > len(self.approvers):
            raise ValueError(f"min_approvals {self.min_approvals} is more than the {len(self.approvers)} approvers; "
                             "lower it or add approvers")
        if self.webhook_key is not None:
            try:
                public_key_blob(self.webhook_key)
            except ProofError as exc:
                raise ValueError(f"webhook_key: {exc}") from None
        if self.require_proof:
            provable = {a.name for a in self.identities if a.keys or (a.github and self.webhook_key)}
            if not self.approvers:
                raise ValueError("require_proof needs approvers with keys or a github login; list them under approvers")
            unprovable = [n for n in self.approvers if n not in provable]
            if unprovable:
                raise ValueError(f"require_proof: approver {unprovable[0]!r} has no keys and no github login (with "
                                 "webhook_key), so could never decide; give them keys: [...] or github: LOGIN")
        return self

    def identity(self, name: str) -> Approver | None:
        """The approver ``name``'s keys and GitHub login, when declared."""
        return next((a for a in self.identities if a.name == name), None)


class DockerConfig(Strict):
    """How a tenant uses a Docker engine (``DOCKER_HOST`` and friends choose the engine)."""

    image: str = Field("katkit-builder:latest", description="builder image when a phase names none")
    cpus: float | None = Field(None, gt=0, description="CPU limit of a builder")
    memory: str | None = Field(None, pattern=r"^\d+[bkmg]?$", description="memory limit of a builder, e.g. 512m")
    builder_network: str = Field("katkit-builders", description="network of builders when LocalFleet is false")
    tenant_network: str | None = Field(None, description="the tenant's network (services; builders when LocalFleet is true); default: the tenant's name")
    docker_socket: bool = Field(False, description="mount the engine's socket into builders so ci.sh can docker build")
    mount_mirror: bool = Field(True, description="builders clone from the worker's git mirror, mounted read-only")
    shared_engine: bool = Field(False, description="every worker host uses this one engine (DOCKER_HOST): a shard "
                                "needs no particular host; default: each host has its own engine")
    settle: Duration = Field(timedelta(seconds=3), description="how long a new replica without HEALTHCHECK must keep running")
    health_timeout: Duration = Field(timedelta(minutes=5), description="how long new replicas may take to become healthy")

    def network_of(self, tenant: str) -> str:
        return self.tenant_network or tenant


class EcsConfig(Strict):
    """How a tenant uses ECS (credentials: boto3's standard chain; region: here or AWS_REGION)."""

    region: str | None = None
    cluster: str = Field("default", description="the tenant's cluster: its services, and builders when LocalFleet is true")
    builders_cluster: str = Field("katkit-builders", description="the shared builders' cluster (LocalFleet false)")
    launch_type: Literal["FARGATE", "EC2"] = "FARGATE"
    subnets: list[str] = Field(default_factory=list, description="awsvpc subnets of builder tasks")
    security_groups: list[str] = Field(default_factory=list)
    assign_public_ip: bool = False
    task_definition: str = Field("katkit-builder", description="the builder task definition (family, family:rev or ARN)")
    container: str = Field("agent", description="the builder task definition's agent container")
    cpu: str | None = Field(None, description="task CPU override of builders, e.g. '1024'")
    memory: str | None = Field(None, description="task memory override of builders, e.g. '2048'")
    log_group: str = Field("/katkit/builders", description="the awslogs group of the builder task definition")
    log_stream_prefix: str = Field("katkit", description="the awslogs stream prefix of the builder task definition")
    poll: Duration = Field(timedelta(seconds=2), description="how often a builder task is described while it runs")
    deploy_timeout: Duration = Field(timedelta(minutes=15), description="how long a service update may take to complete")


def _secret_name(value: str) -> str:
    from katkit.secrets import NAME_PATTERN

    if not NAME_PATTERN.match(value):
        raise ValueError(f"{value!r} is not an environment variable name; a secret's name is what ci.sh sees, "
                         "e.g. NPM_TOKEN (letters, digits, '_', not starting with a digit)")
    return value


def _secret_ref(value: str) -> str:
    from katkit.secrets import check_ref

    return check_ref(value)


SecretName = Annotated[str, AfterValidator(_secret_name)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]

WEBHOOK_REF = re.compile(r"^(url_env:[A-Za-z_][A-Za-z0-9_]*|url_file:/\S+|aws-sm:[^#\s]+(#\S+)?)$")


class WebhookTarget(Strict):
    """Where a tenant's gate and deploy events go. ``url`` is kept in workflow history (a Slack URL carries a
    token: prefer a reference); ``url_env``/``url_file``/``aws_sm`` are resolved by the worker when it sends."""

    url: str | None = Field(None, description="the URL itself (visible in workflow history)")
    url_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="the worker's env var holding it")
    url_file: str | None = Field(None, pattern=r"^/\S+$", description="a file on the worker host holding it")
    aws_sm: str | None = Field(None, alias="aws-sm", pattern=r"^[^#\s]+(#\S+)?$",
                               description="an AWS Secrets Manager secret (ID[#json key]) holding it")
    format: Literal["json", "slack"] = Field("json", description="json: katkit's event; slack: an incoming-webhook message")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        """``"https://..."`` is a URL; ``"url_env:VAR"``, ``"url_file:/path"``, ``"aws-sm:ID#key"`` are references."""
        if not isinstance(data, str):
            return data
        if WEBHOOK_REF.match(data):
            scheme, _, target = data.partition(":")
            return {scheme.replace("-", "_"): target}
        return {"url": data}

    @model_validator(mode="after")
    def _one_source(self) -> WebhookTarget:
        given = [k for k in ("url", "url_env", "url_file", "aws_sm") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a webhook target needs exactly one of url, url_env, url_file or aws-sm")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.url!r} is neither an http(s) URL nor a reference "
                             "(url_env:VAR, url_file:/path, aws-sm:ID#key)")
        return self

    @property
    def reference(self) -> str:
        """What logs and errors may show: the reference, or the URL without its path (which may hold a token)."""
        if self.url is not None:
            parts = self.url.split("/")
            return "/".join(parts[:3]) + "/..." if len(parts) > 3 else self.url
        return next(f"{k.replace('_sm', '-sm')}:{v}" for k, v in (("url_env", self.url_env), ("url_file", self.url_file),
                                                                   ("aws_sm", self.aws_sm)) if v)


class TenantGitHub(Strict):
    """What a tenant does with GitHub links: push/PR triggers, its deployment environment, the token for ci.sh."""

    auto_trigger: bool = Field(False, description="a push to a link's home branch starts a run in this tenant")
    pull_requests: bool = Field(False, description="a PR opened or pushed against the home branch starts a run here")
    environment: str | None = Field(None, description="the GitHub deployment environment; default: the tenant's name")
    token_to_builder: bool = Field(False, description="ci.sh gets the worker's GitHub token as GITHUB_TOKEN")


@functools.lru_cache(maxsize=64)
def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


class FreezeWindow(Strict):
    """A recurring freeze: from each ``start`` (a 5-field cron expression in ``timezone``) for ``duration`` the
    tenant deploys nothing (execution phases still run)."""

    start: str = Field(description="cron expression of each window's start, e.g. '0 18 * * 5' (Fridays 18:00)")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in, e.g. Europe/Berlin")
    duration: Duration = Field(description="how long each window lasts, e.g. 62h")
    reason: str = Field("", description="shown while a run waits, e.g. 'weekend'")

    @model_validator(mode="after")
    def _valid(self) -> FreezeWindow:
        if len(self.start.split()) != 5 or not croniter.is_valid(self.start):
            raise ValueError(f"start {self.start!r} is not a cron expression; write 5 fields: minute hour day month "
                             "weekday, e.g. '0 18 * * 5' (Fridays 18:00)")
        if not _is_zone(self.timezone):
            raise ValueError(f"timezone {self.timezone!r} is not a time zone; write e.g. UTC or Europe/Berlin") from None
        if self.duration <= timedelta(0):
            raise ValueError("duration must be more than 0, e.g. 2h or 62h")
        return self


