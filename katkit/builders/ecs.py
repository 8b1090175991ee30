"""The ``ecs`` builder: one ECS task per phase shard (RunTask), running the agent of the builder task definition.

``startedBy`` and the task's tags derive from run, execution, phase and shard, so a retried activity finds
the task it started (ListTasks by startedBy) and re-attaches instead of starting a second one. The phase
result is the agent container's exit code; a task stopped for another reason (out of memory, a spot
interruption, an image that could not be pulled) fails the phase with ECS's stoppedReason. The builder's
CloudWatch Logs stream (awslogs) is copied into the log store as it grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
import json
import threading
import time
from typing import Any

from katkit.aws import aws_errors, client
from katkit.builders import BuilderSpec, BuilderState
from katkit.config import EcsConfig, TenantConfig
from katkit.errors import BadInput

STOP_REASON = "katkit: the builder is removed (finished, cancelled or timed out)"
_RUNNING = ("PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING")


def started_by(name: str) -> str:
    """ECS's startedBy holds 36 characters: a stable digest of the builder's name."""
    return "katkit-" + hashlib.sha256(name.encode()).hexdigest()[:29]


class _LogCursor:
    def __init__(self) -> None:
        self.position = 0
        self.token: str | None = None
        self.pending = b""
        self.exhausted = False  # the last read found no new events


class EcsBuilder:
    _seen: dict[tuple[str | None, str, str], EcsConfig] = {}  # the clusters this process started builders in
    _seen_lock = threading.Lock()

    def __init__(self, config: EcsConfig, tenant: str) -> None:
        self.config = config
        self.tenant = tenant
        with self._seen_lock:
            self._seen.setdefault((config.region, config.cluster, config.builders_cluster), config)
        self._cursors: dict[str, _LogCursor] = {}
        self._tasks: dict[str, tuple[str, str]] = {}  # builder name -> (cluster, task arn)
        self._lock = threading.Lock()

    @classmethod
    def for_tenant(cls, tenant: TenantConfig | None, home: object) -> EcsBuilder:
        return cls(tenant.ecs if tenant else EcsConfig(), tenant.name if tenant else "")

    @classmethod
    def on_this_host(cls, home: object) -> list[EcsBuilder]:
        """Builders of the clusters this worker has used since it started (ECS has no list of tenants to ask)."""
        with cls._seen_lock:
            configs = list(cls._seen.values())
        return [cls(config, "") for config in configs]

    @property
    def ecs(self) -> Any:
        return client("ecs", self.config.region)

    @property
    def logs(self) -> Any:
        return client("logs", self.config.region)

    def _cluster(self, local_fleet: bool) -> str:
        return self.config.cluster if local_fleet else self.config.builders_cluster

    def prepare(self, spec: BuilderSpec) -> None:
        """Nothing to prepare: a task is placed and started by one RunTask."""

    @aws_errors
    def check_image(self, image: str | None) -> None:
        """The builder task definition must exist; RunTask cannot override an image, so a ContinerImage is refused."""
        from botocore.exceptions import ClientError

        if image:
            raise BadInput(f"ContinerImage {image!r}: the ecs builder runs its task definition's image; register a task "
                           "definition with that image and name it in the tenant's ecs.task_definition")
        try:
            self.ecs.describe_task_definition(taskDefinition=self.config.task_definition)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("ClientException", "InvalidParameterException"):
                raise BadInput(f"builder task definition {self.config.task_definition!r} is not registered in ECS; "
                               "register it (see deploy/aws/) or fix ecs.task_definition") from None
            raise

    def _find(self, name: str) -> tuple[str, str] | None:
        if name in self._tasks:
            return self._tasks[name]
        token = started_by(name)
        for cluster in dict.fromkeys((self.config.cluster, self.config.builders_cluster)):
            for desired in ("RUNNING", "STOPPED"):
                arns = self.ecs.list_tasks(cluster=cluster, startedBy=token, desiredStatus=desired).get("taskArns", [])
                if arns:
                    self._tasks[name] = (cluster, arns[0])
                    return self._tasks[name]
        return None

    @aws_errors
    def start(self, spec: BuilderSpec) -> bool:
        if self._find(spec.name) is not None:
            return False
        cluster = self._cluster(spec.local_fleet)
        agent_spec = {"repo_url": spec.repo_url, "sha": spec.sha, "folder": spec.folder, "workspace": "/workspace/src"}
        container: dict[str, Any] = {
            "name": self.config.container,
            "command": ["--spec-json", json.dumps(agent_spec)],
            "environment": [{"name": k, "value": v} for k, v in spec.env.items()],
        }
        overrides: dict[str, Any] = {"containerOverrides": [container]}
        if self.config.cpu:
            overrides["cpu"] = self.config.cpu
        if self.config.memory:
            overrides["memory"] = self.config.memory
        params: dict[str, Any] = {
            "cluster": cluster, "taskDefinition": self.config.task_definition, "count": 1,
            "launchType": self.config.launch_type, "overrides": overrides, "startedBy": started_by(spec.name),
            "tags": [{"key": k, "value": v} for k, v in {**spec.labels, "katkit.builder": spec.name}.items()],
        }
        if self.config.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": self.config.subnets, "securityGroups": self.config.security_groups,
                "assignPublicIp": "ENABLED" if self.config.assign_public_ip else "DISABLED"}}
        self.check_image(spec.image)
        result = self.ecs.run_task(**params)
        if not result.get("tasks"):
            raise BadInput(f"ECS could not start the builder task in cluster {cluster}: {result.get('failures')}")
        self._tasks[spec.name] = (cluster, result["tasks"][0]["taskArn"])
        return True

    def _describe(self, name: str) -> dict[str, Any] | None:
        found = self._find(name)
        if found is None:
            return None
        cluster, arn = found
        tasks = self.ecs.describe_tasks(cluster=cluster, tasks=[arn]).get("tasks", [])
        return tasks[0] if tasks else None

    @aws_errors
    def state(self, name: str) -> BuilderState:
        task = self._describe(name)
        if task is None:
            return BuilderState(running=False, reason=f"the builder task of {name} is gone (stopped long ago or never started)")
        cursor = self._cursors.get(name)
        if task.get("lastStatus") in _RUNNING or cursor is None or not cursor.exhausted or cursor.pending:
            return BuilderState(running=True)  # a stopped task is done once its log stream has been read to the end
        agent = next((c for c in task.get("containers", []) if c.get("name") == self.config.container),
                     (task.get("containers") or [{}])[0])
        code = agent.get("exitCode")
        reason = task.get("stoppedReason") or ""
        container_reason = agent.get("reason") or ""
        if "OutOfMemory" in container_reason or "OutOfMemory" in reason:
            return BuilderState(running=False, exit_code=code if code is not None else 137,
                                reason=f"the builder task ran out of memory ({container_reason or reason})")
        if code is None:
            return BuilderState(running=False, reason=f"the builder task stopped before ci.sh ended: {reason or container_reason}")
        if code == 255:
            return BuilderState(running=False, exit_code=code, reason="the agent could not run ci.sh (see the log)")
        return BuilderState(running=False, exit_code=int(code), reason=f"ci.sh exited {code}")

    def _stream(self, name: str) -> str | None:
        found = self._find(name)
        if found is None:
            return None
        task_id = found[1].rsplit("/", 1)[1]
        return f"{self.config.log_stream_prefix}/{self.config.container}/{task_id}"

    @aws_errors
    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        from botocore.exceptions import ClientError

        stream = self._stream(name)
        if stream is None:
            return b""
        with self._lock:
            cursor = self._cursors.get(name)
            if cursor is None or cursor.position > offset:
                cursor = self._cursors[name] = _LogCursor()
        out = bytearray()
        while len(out) < limit:
            if cursor.pending:
                skip = max(0, offset - cursor.position)
                take = cursor.pending[skip:skip + limit - len(out)]
                cursor.position += skip + len(take)
                cursor.pending = cursor.pending[skip + len(take):]
                out += take
                continue
            args: dict[str, Any] = {"logGroupName": self.config.log_group, "logStreamName": stream, "startFromHead": True}
            if cursor.token:
                args["nextToken"] = cursor.token
            try:
                page = self.logs.get_log_events(**args)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ResourceNotFoundException":  # no line written yet
                    cursor.exhausted = True
                    break
                raise
            events = page.get("events", [])
            cursor.exhausted = not events
            if page.get("nextForwardToken"):
                cursor.token = page["nextForwardToken"]
            if not events:
                break
            cursor.pending = b"".join(e["message"].encode() + b"\n" for e in events)
        return bytes(out)

    def wait(self, name: str, timeout: float) -> None:
        time.sleep(max(timeout, self.config.poll.total_seconds()))

    @aws_errors
    def remove(self, name: str, progress: Callable[[], None] = lambda: None) -> None:
        task = self._describe(name)
        if task is not None and task.get("lastStatus") in _RUNNING and task.get("desiredStatus") != "STOPPED":
            self.ecs.stop_task(cluster=task["clusterArn"], task=task["taskArn"], reason=STOP_REASON)
        self._cursors.pop(name, None)

    @aws_errors
    def list(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for cluster in dict.fromkeys((self.config.cluster, self.config.builders_cluster)):
            arns = self.ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING").get("taskArns", [])
            for i in range(0, len(arns), 100):
                for task in self.ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100], include=["TAGS"]).get("tasks", []):
                    tags = {t["key"]: t["value"] for t in task.get("tags", [])}
                    if "katkit.builder" in tags:
                        found[tags["katkit.builder"]] = tags
        return found
