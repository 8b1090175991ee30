"""The ``ecs`` platform: a tenant's service is an ECS service in the tenant's cluster.

Deploy: DescribeServices -> the running task definition; register a new revision of it with ``<hubtag>``
replaced in the service's container image, keeping the running ``environment`` (ExtraConfig) and the
service's ``desiredCount`` (Replicas); UpdateService; wait until the deployment completes (rolloutState,
or running counts where the circuit breaker is off); on failure or timeout, update back to the previous
revision and fail the phase with the reason. An ECR image is checked first (DescribeImages).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from katkit.aws import aws_errors, client
from katkit.errors import BadInput
from katkit.platforms import DeploymentRecord, RunningService
from katkit.platforms.docker import DeployFailed, format_extra_config, parse_extra_config

if TYPE_CHECKING:
    from katkit.config import TenantConfig

ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+):(?P<tag>[^@]+)$")
_TASKDEF_KEYS = ("family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
                 "placementConstraints", "requiresCompatibilities", "cpu", "memory", "pidMode", "ipcMode",
                 "proxyConfiguration", "inferenceAccelerators", "ephemeralStorage", "runtimePlatform")


class EcsPlatform:
    @classmethod
    def for_home(cls, home: object) -> EcsPlatform:
        return cls()

    def _ecs(self, tenant: TenantConfig) -> Any:
        return client("ecs", tenant.ecs.region)

    def _service(self, tenant: TenantConfig, service: str) -> dict[str, Any] | None:
        found = self._ecs(tenant).describe_services(cluster=tenant.ecs.cluster, services=[service]).get("services", [])
        return found[0] if found and found[0].get("status") == "ACTIVE" else None

    def _container(self, taskdef: dict[str, Any], service: str) -> dict[str, Any]:
        containers = taskdef["containerDefinitions"]
        return next((c for c in containers if c["name"] == service), containers[0])

    @aws_errors
    def current(self, tenant: TenantConfig, service: str) -> RunningService | None:
        svc = self._service(tenant, service)
        if svc is None:
            return None
        taskdef = self._ecs(tenant).describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        container = self._container(taskdef, service)
        env = {e["name"]: e["value"] for e in container.get("environment") or []}
        return RunningService(name=service, image=container["image"], extra_config=format_extra_config(env),
                              replicas=int(svc["desiredCount"]))

    def _check_ecr(self, tenant: TenantConfig, image: str) -> None:
        from botocore.exceptions import ClientError

        m = ECR_IMAGE.match(image)
        if not m:
            return
        ecr = client("ecr", m["region"])
        try:
            ecr.describe_images(registryId=m["account"], repositoryName=m["repo"], imageIds=[{"imageTag": m["tag"]}])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
                raise BadInput(f"image {image} not found in ECR — did a build phase push it?") from None
            raise

    @aws_errors
    def deploy(self, tenant: TenantConfig, target: RunningService, record: DeploymentRecord,
               progress: Callable[[], None] = lambda: None) -> DeploymentRecord:
        ecs = self._ecs(tenant)
        svc = self._service(tenant, target.name)
        if svc is None:
            raise BadInput(f"ECS service {target.name!r} does not exist in cluster {tenant.ecs.cluster}; create it first "
                           "(katkit updates services, it does not create them)")
        self._check_ecr(tenant, target.image)
        previous = svc["taskDefinition"]
        taskdef = ecs.describe_task_definition(taskDefinition=previous)["taskDefinition"]
        container = self._container(taskdef, target.name)
        container["image"] = target.image
        container["environment"] = [{"name": k, "value": v} for k, v in parse_extra_config(target.extra_config).items()]
        new = ecs.register_task_definition(**{k: taskdef[k] for k in _TASKDEF_KEYS if taskdef.get(k) is not None})
        revision = new["taskDefinition"]["taskDefinitionArn"]
        record = record.model_copy(update={"previous_revision": previous, "revision": revision})
        ecs.update_service(cluster=tenant.ecs.cluster, service=target.name, taskDefinition=revision,
                           desiredCount=target.replicas)
        try:
            self._wait(tenant, target.name, revision, progress)
        except DeployFailed as failure:
            ecs.update_service(cluster=tenant.ecs.cluster, service=target.name, taskDefinition=previous,
                               desiredCount=target.replicas)
            raise DeployFailed(f"{failure}; rolled back to {previous.rsplit('/', 1)[-1]}") from None
        return record

    def _wait(self, tenant: TenantConfig, service: str, revision: str, progress: Callable[[], None]) -> None:
        deadline = time.monotonic() + tenant.ecs.deploy_timeout.total_seconds()
        while True:
            progress()
            svc = self._service(tenant, service)
            deployments: list[dict[str, Any]] = (svc or {}).get("deployments", [])
            primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
            if primary is not None and primary.get("taskDefinition") == revision:
                state = primary.get("rolloutState")
                if state == "FAILED":
                    raise DeployFailed(f"rollout of {revision.rsplit('/', 1)[-1]} failed: "
                                       f"{primary.get('rolloutStateReason') or 'ECS reported FAILED'}")
                others = [d for d in deployments if d is not primary]
                counts_done = primary.get("runningCount") == primary.get("desiredCount") and not others
                if state == "COMPLETED" or (state is None and counts_done):
                    return
            if time.monotonic() > deadline:
                raise DeployFailed(f"rollout of {revision.rsplit('/', 1)[-1]} did not complete within "
                                   f"{tenant.ecs.deploy_timeout}")
            time.sleep(tenant.ecs.poll.total_seconds())

