"""katkit.yaml (tenants and links) and the connection settings (``KATKIT_*`` environment variables).

Unknown keys and bad values are errors that name the key and the fix.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      model_validator)
from pydantic_settings import BaseSettings, SettingsConfigDict

from katkit.errors import ConfigError, UnknownName, did_you_mean
from katkit.names import NAME_RULE, is_safe_name
from katkit.proof import ProofError, public_key_blob  # at import: the workflow sandbox validates configs too
from katkit.payload import show, unfit

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: Any) -> Any:
    """Accept ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"1h30m"``, ``"2d"``; pass timedeltas through."""
    if isinstance(value, timedelta) or value is None:
        return value
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m and any(m.groups()):
                d, h, mi, s = (int(g or 0) for g in m.groups())
                return timedelta(days=d, hours=h, minutes=mi, seconds=s)
            if re.fullmatch(r"P.*", value):  # ISO 8601, as pydantic serialises timedeltas
                return value
    except (OverflowError, ValueError):  # inf, nan, beyond timedelta's 999999999 days, beyond int's digits limit
        raise ValueError(f"{show(value)} is not a duration katkit can hold; write e.g. 90s, 15m, 24h, 1h30m or 2d") from None
    raise ValueError(f"{show(value)} is not a duration; write e.g. 90s, 15m, 24h, 1h30m or 2d")


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):  # also: its JSON form "-PT5S" would not parse back when the config crosses into a workflow
        raise ValueError("a duration may not be negative; write 0 or more, e.g. 90s, 15m, 24h, 1h30m or 2d")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_not_negative)]


def _safe_name(value: str) -> str:
    if not is_safe_name(value):
        raise ValueError(f"{value!r} is not a valid name; use {NAME_RULE}")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
"""A name that becomes part of paths, container names, labels, lock ids and workflow ids."""


def _safe_folder(value: str) -> str:
    """A folder inside the repository: relative, no '..', no empty or '.' parts (symlinks are checked at the sha)."""
    parts = value.strip("/").split("/") if value.strip("/") else []
    if value.startswith("/") or value.startswith("~") or any(p in ("", ".", "..") for p in parts) or "\0" in value \
            or "\\" in value:
        raise ValueError(f"{value!r} is not a folder inside the repository; give a relative path such as "
                         "'services/api' (no leading '/', no '..'), or \"\" for the repository root")
    return "/".join(parts)


def _cache_path(value: str) -> str:
    """A cached path: ``~/x`` (in the builder's HOME) or ``x`` (in the checkout, from the link's folder); no '..'."""
    home = value.startswith("~/")
    rest = value[2:] if home else value
    parts = rest.strip("/").split("/") if rest.strip("/") else []
    if not parts or rest.startswith("/") or rest.startswith("~") or any(p in ("", ".", "..") for p in parts) \
            or "\0" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a cache path; give one inside the checkout such as 'node_modules' or one "
                         "in the builder's home such as '~/.cache/pip' (no leading '/', no '..')")
    return ("~/" if home else "") + "/".join(parts)


CachePath = Annotated[str, AfterValidator(_cache_path)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class TenantConfig(Strict):
    name: SafeName
    env: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    platform: Literal["docker", "ecs", "local"] = "local"
    builder: Literal["docker", "ecs", "local"] = "local"
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    phase_timeout: Duration = timedelta(hours=1)
    host_wait: Duration = Field(timedelta(minutes=10), description="how long a shard waits for the worker host that "
                                "owns its builder to come back before it starts afresh on another host")
    docker: DockerConfig = Field(default_factory=DockerConfig)
    ecs: EcsConfig = Field(default_factory=EcsConfig)
    deploy_lock: Literal["queue", "supersede"] = Field(
        "queue", description="deploys of one service wait in arrival order; supersede: a newer run cancels older waiters")
    webhooks: list[WebhookTarget] = Field(default_factory=list, description="where each gate/deploy event is sent")
    github: TenantGitHub = Field(default_factory=TenantGitHub)
    freezes: list[FreezeWindow] = Field(default_factory=list, description="recurring windows with no deploys")
    on_freeze: Literal["wait", "fail"] = Field(
        "wait", description="a deploy during a freeze waits until it ends (wait) or fails the run at once (fail)")
    on_post_deploy_failure: Literal["fail", "rollback"] = Field(
        "fail", description="a phase after the deployment phase fails: the run fails (fail), or katkit first redeploys "
                            "the previous image through the same deploy lock, with no new approval (rollback)")
    secrets: dict[SecretName, SecretRef] = Field(
        default_factory=dict, description="NAME: reference (env:VAR, file:/path, aws-sm:ID[#key], aws-ssm:/param); "
                                          "ci.sh gets NAME=value, every log gets *** instead")
    phases_with_secrets: list[str] | None = Field(None, description="only these phases get the secrets (default: all)")
    secrets_for_fork_prs: bool = Field(False, description="runs for pull requests from forks get the secrets and the "
                                       "GitHub token too (default: they get neither: their code is not trusted)")
    deploy_fork_prs: bool = Field(False, description="runs for pull requests from forks may deploy (through the gate, "
                                  "which must then be required); default: their deployment phase is skipped")
    cache: list[CachePath] = Field(default_factory=list, max_length=20, description=(
        "paths kept between runs of one link and branch (local and docker builders): 'node_modules' (in the checkout) "
        "or '~/.cache/pip' (the builder's HOME); restored before ci.sh, saved after a shard that succeeded"))

    @model_validator(mode="after")
    def _fork_deploys_need_a_gate(self) -> TenantConfig:
        if self.deploy_fork_prs and not self.approval.required:
            raise ValueError("deploy_fork_prs: true needs approval.required: true (a person looks at a fork's code "
                             "before it deploys)")
        return self

    @property
    def builders_need_their_host(self) -> bool:
        """Whether a shard's builder can only be re-attached from the worker host that started it: a local process,
        or a container on a per-host engine. ECS tasks and a shared engine are reachable from every host."""
        return self.builder == "local" or (self.builder == "docker" and not self.docker.shared_engine)

    @property
    def github_environment(self) -> str:
        return self.github.environment or self.name


class LinkConfig(Strict):
    repo: SafeName
    url: str
    branch: str = "main"
    folder: Annotated[str, AfterValidator(_safe_folder)] = ""
    tenants: list[str] = Field(default_factory=list)
    github: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                               description="owner/name on GitHub; default: taken from a url on one of github.hosts")
    github_api_url: str | None = Field(None, description="the REST API of that GitHub; default: github.api_url")
    _index: int | None = PrivateAttr(None)  # where katkit.yaml lists it, for errors found later (not serialised)

    @property
    def folder_key(self) -> str:
        """How an error names this link's folder: ``katkit.yaml: links.N.folder``."""
        return f"katkit.yaml: links.{self._index}.folder" if self._index is not None else f"katkit.yaml: link {self.repo!r} folder"

    def github_token(self, token: str | None) -> str | None:
        """The worker's GitHub token for this link: only a GitHub link gets it, never another host."""
        return token if self.github else None


class GitHubConfig(Strict):
    api_url: str = Field("https://api.github.com", description="GitHub Enterprise: https://HOST/api/v3")
    hosts: list[str] = Field(default_factory=lambda: ["github.com"], description="git hosts whose links are GitHub repos")


class KatkitConfig(Strict):
    tenants: list[TenantConfig] = Field(default_factory=list)
    links: list[LinkConfig] = Field(default_factory=list)
    github: GitHubConfig = Field(default_factory=GitHubConfig)

    @model_validator(mode="after")
    def _github_links(self) -> KatkitConfig:
        """A link on a GitHub host is a GitHub repo: owner/name from its url, the API from ``github.api_url``."""
        for index, link in enumerate(self.links):
            link._index = index
            if link.github is None:
                m = re.match(r"^(?:https?://(?:[^@/]+@)?|ssh://git@|git@)([^/:]+)(?::\d+)?[/:]([\w.-]+)/([\w.-]+?)(?:\.git)?/?$",
                             link.url)
                if m and m.group(1) in self.github.hosts:
                    link.github = f"{m.group(2)}/{m.group(3)}"
            if link.github is not None and link.github_api_url is None:
                link.github_api_url = self.github.api_url.rstrip("/")
        return self

    @model_validator(mode="after")
    def _check_names(self) -> KatkitConfig:
        names = [t.name for t in self.tenants]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"tenant {name!r} is defined twice; give each tenant a unique name")
        for link in self.links:
            for t in link.tenants:
                if t not in names:
                    raise ValueError(f"link {link.repo!r} names tenant {t!r}, which is not in tenants; add it or fix the name")
        return self

    def tenant(self, name: str) -> TenantConfig:
        for t in self.tenants:
            if t.name == name:
                return t
        names = [t.name for t in self.tenants]
        raise UnknownName(f"unknown tenant {name!r}{did_you_mean(name, names)} (known: {', '.join(names) or 'none'}); "
                          "add it to katkit.yaml under tenants")

    def link(self, repo: str, tenant: str | None = None) -> LinkConfig:
        for link in self.links:
            if link.repo == repo:
                if tenant is not None and tenant not in link.tenants:
                    raise UnknownName(
                        f"repo {repo!r} is not linked to tenant {tenant!r} (linked: {', '.join(link.tenants)}); "
                        "add the tenant to the link's tenants in katkit.yaml"
                    )
                return link
        repos = [link.repo for link in self.links]
        raise UnknownName(f"unknown repo {repo!r}{did_you_mean(repo, repos)} (known: {', '.join(repos) or 'none'}); "
                          "add it to katkit.yaml under links")


def _first_error(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return ConfigError(f"{source}: unknown key {where!r}; remove it or check its spelling against the README")
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{source}: {where}: {msg}")


def parse_config(text: str, source: str = "katkit.yaml") -> KatkitConfig:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        context = " ".join(str(getattr(exc, "context", None) or "").split())
        what = f"{problem} ({context})" if context and context != problem else problem
        raise ConfigError(f"{source}: not valid YAML{at}: {what}; fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply; flatten the lists and mappings") from None
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors fail on some scalars with ValueError (2001-02-30,
        # a 5000-digit number), IndexError (an empty !!int or !!float), KeyError (!!bool x), AttributeError (!!timestamp x)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML: a value cannot be read ({detail}); fix or quote the value, "
                          "and drop any !!int, !!float, !!bool or !!timestamp tag") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'tenants' and 'links' at the top level")
    misfit = unfit(data)  # what a workflow payload cannot hold
    if misfit is not None:
        raise ConfigError(f"{source}: {misfit[0]}; {misfit[1]}")
    try:
        config = KatkitConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, source) from None
    for tenant in config.tenants:
        if tenant.cache and tenant.builder == "ecs":
            logging.getLogger("katkit.config").warning(
                "%s: tenant %s sets cache, but ECS builders keep no cache between runs; its paths are not kept",
                source, tenant.name)
    return config


class NoConfigFound(ConfigError):
    """No katkit.yaml was named and none is in the usual places."""


def _read_config(path: Path) -> KatkitConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save katkit.yaml as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    return parse_config(text, str(path))


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where katkit.yaml is: ``path``, else ``$KATKIT_CONFIG``, else ``./katkit.yaml``, else the katkit home's."""
    explicit = path or os.environ.get("KATKIT_CONFIG")
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"katkit.yaml not found: {explicit}; check the path (--config or KATKIT_CONFIG)")
        return Path(explicit)
    candidates = [Path("katkit.yaml"), Settings().home / "katkit.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise NoConfigFound(f"no katkit.yaml found (tried {tried}); pass --config PATH or run 'katkit demo' to make one")


def load_config(path: str | os.PathLike[str] | None = None) -> KatkitConfig:
    """Read katkit.yaml from where :func:`config_path` finds it."""
    return _read_config(config_path(path))


class Settings(BaseSettings):
    """Connection and storage settings, from ``KATKIT_*`` environment variables (and Temporal's own)."""

    model_config = SettingsConfigDict(env_prefix="KATKIT_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.katkit")))
    address: str = Field(default_factory=lambda: os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    namespace: str = Field(default_factory=lambda: os.environ.get("TEMPORAL_NAMESPACE", "default"))
    task_queue: str = "katkit"
    host_id: str | None = Field(None, description="this worker host's name on its own task queue "
                                "(default: the hostname and a hash of the katkit home; stable across restarts)")
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api_key: str | None = Field(default=None, repr=False)
    ui_url: str = "http://localhost:8233"
    log_dir: Path | None = None
    log_store: str | None = Field(None, description="s3://bucket/prefix for the S3 log store (default: the log directory)")
    reap_interval: float = Field(300.0, gt=0, description="seconds between passes of the orphan builder reaper")
    stop_grace: float = Field(10.0, ge=0, le=600, description="seconds a local builder's ci.sh has between SIGTERM "
                              "and SIGKILL (read by the builder as KATKIT_STOP_GRACE; checked here at start)")
    lock_watchdog: float = Field(30.0, gt=0, description="seconds between checks that deploy lock holders still run")
    github_token: str | None = Field(None, repr=False, description="GitHub token: API calls and git over HTTPS")
    github_webhook_secret: str | None = Field(None, repr=False, description="the secret GitHub signs webhook deliveries with")
    webhook_signing_key: Path | None = Field(None, description="the SSH ed25519 private key `katkit webhook` signs "
                                             "approvals from GitHub comments with (tenants list its public key as "
                                             "approval.webhook_key)")

    @property
    def host_queue(self) -> str:
        """The task queue of this worker host alone: a shard's attempts go there, so a retry re-attaches here."""
        import hashlib
        import socket

        host = self.host_id or f"{socket.gethostname()}-{hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:8]}"
        return f"{self.task_queue}@{host}"

    @property
    def logs_path(self) -> Path:
        return self.log_dir or self.home / "logs"

    def run_url(self, run_id: str) -> str:
        from urllib.parse import quote

        return f"{self.ui_url}/namespaces/{self.namespace}/workflows/{quote(run_id, safe='')}"


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "KATKIT_" + str(err["loc"][0]).upper()
        raise ConfigError(f"{key}: {err['msg']}; fix the environment variable") from None
