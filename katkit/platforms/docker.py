"""The ``docker`` platform: a tenant's service is its containers labelled ``katkit.tenant`` and ``katkit.service``.

A deploy starts the new replicas (named from tenant, service and image, so a resumed deploy finds them),
waits until they are healthy (the image's HEALTHCHECK, else running for a settle period), and only then
removes the old ones. If the new replicas fail, they are removed and the old ones keep serving.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from katkit.builders.docker import EngineUser, engine_errors
from katkit.errors import BadInput
from katkit.platforms import DeploymentRecord, RunningService

if TYPE_CHECKING:
    from katkit.config import TenantConfig

TENANT_LABEL, SERVICE_LABEL = "katkit.tenant", "katkit.service"
REPLICAS_LABEL, EXTRA_LABEL, RUN_LABEL = "katkit.replicas", "katkit.extra_config", "katkit.deployed_by_run"
POLL_S = 0.25


class DeployFailed(BadInput):
    """The new replicas did not become healthy; the old ones keep serving. Not retried."""


def parse_extra_config(text: str | None) -> dict[str, str]:
    """ExtraConfig as env vars: ``K=V`` lines, a JSON object, or DuploCloud's ``[{"Name": .., "Value": ..}]``."""
    if not text or not text.strip():
        return {}
    stripped = text.strip()
    if stripped[0] in "[{":
        try:
            data = json.loads(stripped)
        except ValueError:
            raise BadInput("ExtraConfig is neither K=V lines nor valid JSON; fix the running service's ExtraConfig") from None
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        return {str(item["Name"]): str(item.get("Value", "")) for item in data}
    env = {}
    for line in stripped.splitlines():
        if line.strip():
            key, _, value = line.strip().partition("=")
            env[key] = value
    return env


def format_extra_config(env: dict[str, str]) -> str | None:
    return "\n".join(f"{k}={v}" for k, v in env.items()) or None


class DockerPlatform(EngineUser):
    def __init__(self, client: Any = None) -> None:
        super().__init__(client)

    @classmethod
    def for_home(cls, home: object) -> DockerPlatform:
        return cls()

    def _containers(self, tenant: str, service: str, all: bool = False) -> list[dict[str, Any]]:
        filters = {"label": [f"{TENANT_LABEL}={tenant}", f"{SERVICE_LABEL}={service}"]}
        return [self.api.inspect_container(c["Id"]) for c in self.api.containers(all=all, filters=filters)]

    @engine_errors
    def current(self, tenant: TenantConfig, service: str) -> RunningService | None:
        running = self._containers(tenant.name, service)
        if not running:
            return None
        newest = max(running, key=lambda c: c["Created"])
        image = newest["Config"]["Image"]
        group = [c for c in running if c["Config"]["Image"] == image]
        labels = newest["Config"].get("Labels") or {}
        if EXTRA_LABEL in labels:  # deployed by katkit: what it was asked to keep
            extra = labels[EXTRA_LABEL] or None
        else:  # started by someone else: its env minus what the image sets
            image_env = set(self.api.inspect_image(newest["Image"])["Config"].get("Env") or [])
            extra = format_extra_config(dict(e.split("=", 1) for e in newest["Config"].get("Env") or [] if e not in image_env))
        replicas = int(labels[REPLICAS_LABEL]) if REPLICAS_LABEL in labels else len(group)
        return RunningService(name=service, image=image, extra_config=extra, replicas=replicas)

    @engine_errors
    def deploy(self, tenant: TenantConfig, target: RunningService, record: DeploymentRecord,
               progress: Callable[[], None] = lambda: None) -> DeploymentRecord:
        import docker.errors

        try:
            image_info = self.api.inspect_image(target.image)
        except docker.errors.ImageNotFound:
            raise BadInput(f"image {target.image} not found — did a build phase build it?") from None
        tag = hashlib.sha256(target.image.encode()).hexdigest()[:10]
        names = [f"{tenant.name}-{target.name}-{tag}-{i}" for i in range(target.replicas)]
        existing = self._containers(tenant.name, target.name, all=True)
        old = [c for c in existing if c["Name"].lstrip("/") not in names]
        if old:  # what ran before this deploy, as the engine knows it (also when a crashed deploy resumes)
            record = record.model_copy(update={"previous_image": max(old, key=lambda c: c["Created"])["Config"]["Image"]})
        new_ids = [self._ensure_replica(tenant, target, name) for name in names]
        try:
            self._wait_healthy(new_ids, image_info, tenant, progress)
        except DeployFailed:
            for cid in new_ids:
                self.api.remove_container(cid, force=True)
            raise
        for c in old:
            try:
                self.api.remove_container(c["Id"], force=True)
            except docker.errors.NotFound:
                pass
        return record

    def _ensure_replica(self, tenant: TenantConfig, target: RunningService, name: str) -> str:
        import docker.errors

        try:
            info = self.api.inspect_container(name)
            if info["State"]["Status"] == "running":
                running: str = info["Id"]  # started by the attempt that a crash interrupted
                return running
            self.api.remove_container(info["Id"], force=True)
        except docker.errors.NotFound:
            pass
        labels = {TENANT_LABEL: tenant.name, SERVICE_LABEL: target.name, REPLICAS_LABEL: str(target.replicas),
                  EXTRA_LABEL: target.extra_config or "", RUN_LABEL: "1"}
        created = self.api.create_container(
            target.image, name=name, labels=labels, environment=parse_extra_config(target.extra_config),
            host_config=self.api.create_host_config(network_mode=tenant.docker.network_of(tenant.name)),
        )
        cid: str = created["Id"]
        self.api.start(cid)
        return cid

    def _wait_healthy(self, ids: list[str], image_info: dict[str, Any], tenant: TenantConfig,
                      progress: Callable[[], None]) -> None:
        has_check = bool((image_info.get("Config") or {}).get("Healthcheck"))
        settle = tenant.docker.settle.total_seconds()
        deadline = time.monotonic() + tenant.docker.health_timeout.total_seconds()
        first_seen = time.monotonic()
        while True:
            progress()
            states = [self.api.inspect_container(cid) for cid in ids]
            for i, c in enumerate(states):
                st = c["State"]
                if st["Status"] not in ("running", "created", "restarting") or st.get("Restarting"):
                    raise DeployFailed(self._why(c, f"replica {i} {st['Status']} with exit code {st.get('ExitCode')}"))
                if has_check and (st.get("Health") or {}).get("Status") == "unhealthy":
                    raise DeployFailed(self._why(c, f"replica {i} is unhealthy"))
            if has_check:
                if all((c["State"].get("Health") or {}).get("Status") == "healthy" for c in states):
                    return
            elif time.monotonic() - first_seen >= settle:
                return
            if time.monotonic() > deadline:
                raise DeployFailed(f"new replicas not healthy within {tenant.docker.health_timeout}; the old replicas keep serving")
            time.sleep(POLL_S)

    def _why(self, container: dict[str, Any], what: str) -> str:
        tail = self.api.logs(container["Id"], tail=3).decode(errors="replace").strip().replace("\n", " | ")
        image = container["Config"]["Image"]
        return f"rollout of {image} failed: {what}{f' (log: {tail[-200:]})' if tail else ''}; the old replicas keep serving"

