"""katkit.yaml (tenants and links) and the connection settings (``KATKIT_*`` environment variables).

Unknown keys and bad values are errors that name the key and the fix.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from katkit.errors import ConfigError, UnknownName, did_you_mean
from katkit.payload import unfit
from katkit.config_base import CachePath, Duration, SafeName, Strict, _safe_folder, parse_duration
from katkit.tenant_options import (Approver, ApprovalPolicy, DockerConfig, EcsConfig, FreezeWindow, SecretName, SecretRef,
                                   TenantGitHub, WebhookTarget)

__all__ = ["Approver", "ApprovalPolicy", "CachePath", "DockerConfig", "Duration", "EcsConfig", "FreezeWindow",
           "GitHubConfig", "KatkitConfig", "LinkConfig", "NoConfigFound", "SafeName", "SecretName", "SecretRef",
           "Settings", "Strict", "TenantConfig", "TenantGitHub", "WebhookTarget", "config_path", "load_config",
           "load_settings", "parse_config", "parse_duration"]


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
    prepare_ahead: int = Field(2, ge=0, le=8, description=(
        "while a phase runs, the builders of up to this many next execution phases are made ready (started and "
        "checked out, waiting to be told to start ci.sh); 0: none, each builder starts when its phase does"))
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
