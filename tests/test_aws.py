"""ECS builders, ECS services and the S3 log store against moto (server mode on 127.0.0.1, in this process).

moto runs no containers: a thread here plays ECS's agent. It moves each builder task to STOPPED with the
exit code (or stop reason) a test asks for, writes its CloudWatch log lines, and settles service
deployments through moto's backend. What this cannot show (real Fargate scheduling, image pulls, the
deployment circuit breaker's own timing) is for the opt-in suite, tests/test_aws_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from katkit.temporal import free_port
from katkit.aws import client as aws_client
from katkit.aws import reset_clients
from katkit.config import KatkitConfig, Settings, parse_config
from katkit.errors import RunFailed
from katkit.logstore import S3LogStore
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import in_process_worker, wait_for
from tests.test_worker_crash import start_worker

ACCOUNT, REGION = "123456789012", "us-east-1"
BUILDER_FAMILY = "katkit-builder"


AWS_CALLS: set[str] = set()


def _record(event_name: str, **_: Any) -> None:
    # before-call.<service>.<Operation>
    _, service, operation = event_name.split(".", 2)
    AWS_CALLS.add(f"{ {'cloudwatch-logs': 'logs'}.get(service, service)}:{operation}")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.moto_api import state_manager
    from moto.server import ThreadedMotoServer

    from moto.ec2.models.elastic_network_interfaces import NetworkInterface

    if not hasattr(NetworkInterface, "private_dns_name"):  # moto 5.2's RunTask with awsvpc reads it, no ENI has it
        NetworkInterface.private_dns_name = property(
            lambda self: f"ip-{self.private_ip_address.replace('.', '-')}.ec2.internal")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing-key-id",
                      AWS_SECRET_ACCESS_KEY="testing-secret-key", AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION)
    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**9})
    import boto3

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-call", _record)
    reset_clients()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        reset_clients()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ecs_backend() -> Any:
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION]


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=lambda: ["ok"])
    exit_code: int | None = 0
    stopped_reason: str = "Essential container in task exited"
    container_reason: str = ""
    delay: float = 0.0
    hold: threading.Event | None = None  # keep running until set


class FakeEcsAgent:
    """Plays ECS's agent for katkit's builder tasks and services (through moto's backend)."""

    def __init__(self, cluster: str, behaviour: Callable[[dict[str, str]], Outcome]) -> None:
        self.cluster, self.behaviour = cluster, behaviour
        self.seen: dict[str, dict[str, str]] = {}  # task arn -> env it was started with
        self.service_outcome = "COMPLETED"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeEcsAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        logs = aws_client("logs", REGION)
        while not self._stop.is_set():
            backend = ecs_backend()
            for cluster_tasks in list(backend.tasks.values()):
                for arn, task in list(cluster_tasks.items()):
                    live = task.desired_status == "RUNNING" and task.last_status == "RUNNING"
                    if live and task.started_by.startswith("katkit-") and arn not in self.seen:
                        env = {e["name"]: e["value"]
                               for e in task.overrides["containerOverrides"][0].get("environment", [])}
                        self.seen[arn] = env
                        threading.Thread(target=self._run_task, args=(task, env, logs), daemon=True).start()
            for svc in list(backend.services.values()):
                deps = svc.deployments
                if deps and deps[0].get("taskDefinition") != svc.task_definition:
                    svc.deployments = [{**deps[0], "id": f"ecs-svc/{time.time_ns()}", "status": "PRIMARY",
                                        "taskDefinition": svc.task_definition, "rolloutState": self.service_outcome,
                                        "rolloutStateReason": "tasks failed to start" if self.service_outcome == "FAILED"
                                        else "completed", "desiredCount": svc.desired_count,
                                        "runningCount": svc.desired_count}]
            time.sleep(0.05)

    def _run_task(self, task: Any, env: dict[str, str], logs: Any) -> None:
        outcome = self.behaviour(env)
        stream = f"katkit/agent/{task.id}"
        logs.create_log_stream(logGroupName="/katkit/builders", logStreamName=stream)
        if outcome.lines:
            now = int(time.time() * 1000)
            logs.put_log_events(logGroupName="/katkit/builders", logStreamName=stream,
                                logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(outcome.lines)])
        deadline = time.monotonic() + outcome.delay
        while (outcome.hold is not None and not outcome.hold.is_set()) or time.monotonic() < deadline:
            if task.desired_status == "STOPPED":  # StopTask arrived
                return
            time.sleep(0.05)
        task.containers[0].exitCode = outcome.exit_code
        if outcome.container_reason:
            task.containers[0].reason = outcome.container_reason
        task.stopped_reason = outcome.stopped_reason
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"


@pytest.fixture
def aws_world(moto_url: str) -> dict[str, Any]:
    """VPC, subnet, security group, clusters, the builder task definition and its log group."""
    ec2 = aws_client("ec2", REGION)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"katkit-{time.time_ns()}", Description="builders", VpcId=vpc)["GroupId"]
    ecs = aws_client("ecs", REGION)
    for cluster in ("app", "katkit-builders"):
        ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family=BUILDER_FAMILY, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="512", memory="1024",
        containerDefinitions=[{"name": "agent", "image": "katkit-builder:latest", "essential": True, "memory": 512,
                               "logConfiguration": {"logDriver": "awslogs", "options": {
                                   "awslogs-group": "/katkit/builders", "awslogs-stream-prefix": "katkit",
                                   "awslogs-region": REGION}}}])
    logs = aws_client("logs", REGION)
    if not logs.describe_log_groups(logGroupNamePrefix="/katkit/builders")["logGroups"]:
        logs.create_log_group(logGroupName="/katkit/builders")
    return {"subnet": subnet, "sg": sg}


def ecs_config(repo: Path, world: dict[str, Any], tenant: str, platform: str = "local") -> KatkitConfig:
    return parse_config(f"""
tenants:
  - name: {tenant}
    env: DEV
    builder: ecs
    platform: {platform}
    ecs: {{cluster: app, builders_cluster: katkit-builders, subnets: [{world['subnet']}], security_groups: [{world['sg']}],
           poll: 0.2, deploy_timeout: 20s}}
links:
  - {{repo: app, url: {repo}, tenants: [{tenant}]}}
""")


def files(*phases: dict, service_image: str | None = None) -> dict[str, str]:
    out = {"ci.sh": "echo hi\n", "katkitconfig.js": json.dumps([{"EnvName": "default", "LocalFleet": "false",
                                                                 "WorkFlow": list(phases)}])}
    if service_image:
        out["servicedescription/servicedescription.js"] = json.dumps({"Name": "app", "DockerImage": service_image})
    return out


def phase(name: str, order: int, ptype: int = 4, parallelism: int = 1, params: str = "") -> dict:
    return {"Name": name, "PhaseType": ptype, "Order": order, "Parallelism": parallelism, "BuildParams": params}


@pytest.fixture
def tenant() -> str:
    return f"ecs-{time.time_ns() % 10**8}"


@pytest.fixture
def ek(client, settings: Settings, repo: Path, sha: str, aws_world, tenant: str) -> Katkit:
    return Katkit(client, settings, ecs_config(repo, aws_world, tenant))


pytestmark = pytest.mark.usefixtures("moto_url")


@pytest.mark.usefixtures("worker")
async def test_builder_tasks_run_with_the_contract_env_and_stream_their_logs(ek: Katkit, repo: Path, tenant: str) -> None:
    sha = commit_files(repo, files(phase("BUILD", 1, params="MODE=fast"), phase("TEST", 2, parallelism=2)))

    def behaviour(env: dict[str, str]) -> Outcome:
        return Outcome(lines=[f"{env['KATKIT_PHASE']} shard {env['KATKIT_SHARD_INDEX']} line {i}" for i in range(3)])

    with FakeEcsAgent("katkit-builders", behaviour) as agent:
        st = await ek.wait((await ek.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    assert st.status == "succeeded" and [len(p.shards) for p in st.phases] == [1, 2]
    envs = sorted(agent.seen.values(), key=lambda e: (e["KATKIT_PHASE"], e["KATKIT_SHARD_INDEX"]))
    assert [(e["KATKIT_PHASE"], e["KATKIT_SHARD_INDEX"], e["KATKIT_SHARD_COUNT"]) for e in envs] == [
        ("BUILD", "0", "1"), ("TEST", "0", "2"), ("TEST", "1", "2")]
    assert envs[0]["KATKIT_SHA"] == sha and envs[0]["MODE"] == "fast" and envs[0]["KATKIT_TENANT"] == tenant
    assert not any(k.startswith("AWS_") for e in envs for k in e)  # the worker's credentials stay in the worker
    logs = {label: data.decode() async for label, data in ek.follow_logs(st.run_id)}
    assert logs["TEST#2"] == "TEST shard 1 line 0\nTEST shard 1 line 1\nTEST shard 1 line 2\n"
    tasks = [t for ts in ecs_backend().tasks.values() for t in ts.values() if t.task_arn in agent.seen]
    assert all(t.launch_type == "FARGATE" and t.cluster_name == "katkit-builders" for t in tasks)
    tags = {tag["key"]: tag["value"] for tag in tasks[0].tags}
    assert tags["katkit.run"] == st.run_id and tags["katkit.tenant"] == tenant
    history = (await ek.client.get_workflow_handle(st.run_id).fetch_history()).to_json()
    stored = b"".join([d async for _, d in ek.follow_logs(st.run_id)]).decode()
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]):
        assert secret not in history and secret not in stored  # credentials stay in the worker's boto3 chain


@pytest.mark.usefixtures("worker")
async def test_local_fleet_runs_the_builder_in_the_tenants_cluster(ek: Katkit, repo: Path, tenant: str) -> None:
    config = json.loads(files(phase("BUILD", 1))["katkitconfig.js"])
    config[0]["LocalFleet"] = "true"
    sha = commit_files(repo, {"ci.sh": "true\n", "katkitconfig.js": json.dumps(config)})
    with FakeEcsAgent("app", lambda env: Outcome()) as agent:
        await ek.wait((await ek.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    tasks = [t for ts in ecs_backend().tasks.values() for t in ts.values() if t.task_arn in agent.seen]
    assert [t.cluster_name for t in tasks] == ["app"]


@pytest.mark.usefixtures("worker")
async def test_ci_failure_and_oom_stop_fail_the_phase_saying_so(ek: Katkit, repo: Path, tenant: str) -> None:
    sha = commit_files(repo, files(phase("BUILD", 1)))
    with FakeEcsAgent("katkit-builders", lambda env: Outcome(lines=["broken"], exit_code=3)):
        with pytest.raises(RunFailed, match="ci.sh exited 3"):
            await ek.wait((await ek.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    sha2 = commit_files(repo, {"n": "2"})
    oom = Outcome(exit_code=None, stopped_reason="Essential container in task exited",
                  container_reason="OutOfMemoryError: Container killed due to memory usage")
    with FakeEcsAgent("katkit-builders", lambda env: oom):
        with pytest.raises(RunFailed, match="ran out of memory"):
            await ek.wait((await ek.start_run(tenant, "app", sha=sha2, by="bob")).run_id)
    sha3 = commit_files(repo, {"n": "3"})
    spot = Outcome(exit_code=None, stopped_reason="Your Spot Task was interrupted.")
    with FakeEcsAgent("katkit-builders", lambda env: spot):
        with pytest.raises(RunFailed, match="stopped before ci.sh ended: Your Spot Task was interrupted"):
            await ek.wait((await ek.start_run(tenant, "app", sha=sha3, by="bob")).run_id)


@pytest.mark.usefixtures("worker")
async def test_cancel_sends_stop_task(ek: Katkit, repo: Path, tenant: str) -> None:
    sha = commit_files(repo, files(phase("BUILD", 1)))
    hold = threading.Event()
    with FakeEcsAgent("katkit-builders", lambda env: Outcome(lines=["working"], hold=hold)) as agent:
        handle = await ek.start_run(tenant, "app", sha=sha, by="bob")
        await wait_for(lambda: agent.seen)
        await ek.cancel(handle.run_id)
        with pytest.raises(RunFailed, match="cancelled"):
            await ek.wait(handle.run_id)
        task = next(t for ts in ecs_backend().tasks.values() for t in ts.values() if t.task_arn in agent.seen)
        assert task.desired_status == "STOPPED" and task.stopped_reason.startswith("katkit: the builder is removed")
        hold.set()


async def test_a_killed_worker_reattaches_to_the_one_task(ek: Katkit, settings: Settings, repo: Path, tenant: str,
                                                         tmp_path: Path, moto_url: str) -> None:
    sha = commit_files(repo, files(phase("BUILD", 1)))
    hold = threading.Event()
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        with FakeEcsAgent("katkit-builders", lambda env: Outcome(lines=["one", "two"], hold=hold)) as agent:
            handle = await ek.start_run(tenant, "app", sha=sha, by="bob")
            await wait_for(lambda: agent.seen, timeout=60)
            await wait_for(lambda: _logged(ek, handle.run_id, b"two"), timeout=30)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_worker(settings, tmp_path / "w2.log")
            hold.set()
            st = await ek.wait(handle.run_id, interval=0.5)
        assert st.status == "succeeded" and st.phases[0].shards[0].reattached
        assert len(agent.seen) == 1  # one task ever for the shard
        log = b"".join([d async for _, d in ek.follow_logs(handle.run_id)]).decode()
        assert log == "one\ntwo\n"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


async def _logged(kk: Katkit, run_id: str, needle: bytes) -> bool:
    try:
        return needle in b"".join([d async for _, d in kk.follow_logs(run_id)])
    except Exception:  # noqa: BLE001 - not started yet
        return False


def _service(taskdef_env: list[dict[str, str]], image: str = "app:old", replicas: int = 2) -> str:
    ecs = aws_client("ecs", REGION)
    td = ecs.register_task_definition(
        family="app", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": image, "essential": True, "memory": 256, "environment": taskdef_env}],
    )["taskDefinition"]["taskDefinitionArn"]
    existing = ecs.describe_services(cluster="app", services=["app"])["services"]
    if existing and existing[0]["status"] == "ACTIVE":
        ecs.update_service(cluster="app", service="app", taskDefinition=td, desiredCount=replicas)
        backend_service = next(s for s in ecs_backend().services.values() if s.name == "app")
        backend_service.deployments = [{**backend_service.deployments[0], "taskDefinition": td, "status": "PRIMARY"}]
    else:
        ecs.create_service(cluster="app", serviceName="app", taskDefinition=td, desiredCount=replicas, launchType="FARGATE")
    return td


@pytest.mark.usefixtures("worker")
async def test_deploy_keeps_the_running_env_and_desired_count(client, settings: Settings, repo: Path, aws_world,
                                                             tenant: str) -> None:
    old = _service([{"name": "GREETING", "value": "hi"}], replicas=2)
    kk = Katkit(client, settings, ecs_config(repo, aws_world, tenant, platform="ecs"))
    sha = commit_files(repo, files(phase("DEPLOY", 1, ptype=1), service_image="app:<hubtag>"))
    with FakeEcsAgent("app", lambda env: Outcome()):
        st = await kk.wait((await kk.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    assert st.deployed is not None and (st.deployed.image, st.deployed.replicas) == (f"app:{sha}", 2)
    ecs = aws_client("ecs", REGION)
    svc = ecs.describe_services(cluster="app", services=["app"])["services"][0]
    assert svc["taskDefinition"] != old and svc["desiredCount"] == 2
    container = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]["containerDefinitions"][0]
    assert container["image"] == f"app:{sha}" and container["environment"] == [{"name": "GREETING", "value": "hi"}]
    record = (await kk.deployments(tenant, "app"))[-1]
    assert (record.previous_revision, record.revision) == (old, svc["taskDefinition"])


@pytest.mark.usefixtures("worker")
async def test_failed_rollout_is_rolled_back(client, settings: Settings, repo: Path, aws_world, tenant: str) -> None:
    old = _service([{"name": "GREETING", "value": "hi"}], replicas=2)
    kk = Katkit(client, settings, ecs_config(repo, aws_world, tenant, platform="ecs"))
    sha = commit_files(repo, files(phase("DEPLOY", 1, ptype=1), service_image="app:<hubtag>"))
    with FakeEcsAgent("app", lambda env: Outcome()) as agent:
        agent.service_outcome = "FAILED"
        with pytest.raises(RunFailed, match="rollout of app:\\d+ failed: tasks failed to start; rolled back to app:\\d+"):
            await kk.wait((await kk.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    svc = aws_client("ecs", REGION).describe_services(cluster="app", services=["app"])["services"][0]
    assert svc["taskDefinition"] == old and svc["desiredCount"] == 2


@pytest.mark.usefixtures("worker")
async def test_missing_ecr_image_is_one_line(client, settings: Settings, repo: Path, aws_world, tenant: str) -> None:
    _service([], replicas=1)
    aws_client("ecr", REGION).create_repository(repositoryName=f"app-{tenant}")
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/app-{tenant}:<hubtag>"
    kk = Katkit(client, settings, ecs_config(repo, aws_world, tenant, platform="ecs"))
    sha = commit_files(repo, files(phase("DEPLOY", 1, ptype=1), service_image=image))
    with pytest.raises(RunFailed, match=f"image {image.replace('<hubtag>', sha)} not found in ECR — did a build phase push it\\?"):
        await kk.wait((await kk.start_run(tenant, "app", sha=sha, by="bob")).run_id)


async def test_s3_log_store_is_read_from_another_machine(client, settings: Settings, repo: Path, aws_world,
                                                        tenant: str, home: Path) -> None:
    aws_client("s3", REGION).create_bucket(Bucket="katkit-logs")
    s3_settings = settings.model_copy(update={"log_store": "s3://katkit-logs/runs"})
    sha = commit_files(repo, files(phase("BUILD", 1)))
    lines = [f"line {i}" for i in range(50)]
    with FakeEcsAgent("katkit-builders", lambda env: Outcome(lines=lines)):
        async with in_process_worker(client, s3_settings, threads=8):
            kk = Katkit(client, s3_settings, ecs_config(repo, aws_world, tenant))
            st = await kk.wait((await kk.start_run(tenant, "app", sha=sha, by="bob")).run_id)
    elsewhere = Katkit(client, s3_settings, ecs_config(repo, aws_world, tenant), log_store=S3LogStore("s3://katkit-logs/runs"))
    text = b"".join([d async for _, d in elsewhere.follow_logs(st.run_id)]).decode()
    assert text == "".join(f"{line}\n" for line in lines)
    key = st.phases[0].shards[0].log_key
    assert elsewhere.log_store.location(key) == f"s3://katkit-logs/runs/{key}" and elsewhere.log_store.is_finished(key)
    assert not (home / "logs").exists()  # nothing went to the local directory


def test_s3_log_store_resumes_without_loss_or_doubling(moto_url: str) -> None:
    aws_client("s3", REGION).create_bucket(Bucket="katkit-logs-unit")
    store = S3LogStore("s3://katkit-logs-unit/x")
    store.write_at("r/e/P/0.log", 0, b"hello ")
    store.write_at("r/e/P/0.log", 6, b"world")
    store.write_at("r/e/P/0.log", 6, b"WORLD\n")  # a resumed writer rewrites from where it had heartbeated
    assert store.size("r/e/P/0.log") == 12 and store.read("r/e/P/0.log") == b"hello WORLD\n"
    assert store.read("r/e/P/0.log", 3, 5) == b"lo WO" and store.keys("r") == ["r/e/P/0.log"]
    store.write_at("r/e/P/0.log", 3, b"p!\n")  # from inside a part: that part keeps only what comes before
    assert store.read("r/e/P/0.log") == b"help!\n" and store.size("r/e/P/0.log") == 6
    store.finish("r/e/P/0.log", '{"exit_code": 0}')
    assert store.outcome("r/e/P/0.log") == '{"exit_code": 0}' and store.outcome("r/e/P/1.log") is None


def test_iam_policy_allows_exactly_the_calls_katkit_makes() -> None:
    """deploy/aws/katkit-worker-policy.json against every AWS call these tests saw the code make."""
    policy = json.loads((Path(__file__).resolve().parent.parent / "deploy/aws/katkit-worker-policy.json").read_text())
    allowed = {a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    setup_only = {"ec2:CreateVpc", "ec2:CreateSubnet", "ec2:CreateSecurityGroup", "ecs:CreateCluster",
                  "ecs:CreateService", "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                  "logs:DescribeLogGroups", "ecr:CreateRepository", "s3:CreateBucket"}
    to_iam = {"s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject"}
    made = {to_iam.get(c, c) for c in AWS_CALLS if c not in setup_only}
    # the test's own setup and agent register task definitions too; katkit's platform needs the permission anyway
    assert made, "no AWS call was recorded: run this module's tests together"
    assert made <= allowed, f"calls the policy does not allow: {sorted(made - allowed)}"
    implied = {"iam:PassRole", "ecs:TagResource"}  # RunTask with roles and tags needs them, no call names them
    assert allowed - implied <= made, f"the policy allows calls katkit never makes: {sorted(allowed - implied - made)}"


async def test_the_orphan_reaper_reaches_ecs_builders(client, ek: Katkit, repo: Path, sha: str, tenant: str,
                                                      home: Path) -> None:
    """The reaper lists every backend of the one table: ECS builders in the clusters this worker has used too."""
    from katkit.backends import builders_on_this_host, get_builder
    from katkit.builders import BuilderSpec
    from katkit.reaper import reap_once

    tenant_cfg = ek.config.tenant(tenant)
    hold = threading.Event()
    with FakeEcsAgent("katkit-builders", lambda env: Outcome(lines=["orphaned"], hold=hold)) as agent:
        builder = get_builder("ecs", home, tenant_cfg)  # as an activity would have made it
        labels = {"katkit.run": f"run-gone-{tenant}", "katkit.execution": "", "katkit.namespace": client.namespace,
                  "katkit.task_queue": "queue-ecs", "katkit.tenant": tenant}
        builder.start(BuilderSpec(name=f"katkit-orphan-{tenant}", labels=labels, repo_url=str(repo), sha=sha,
                                  env={"KATKIT_PHASE": "BUILD"}))
        await wait_for(lambda: agent.seen)
        reapable = [b for b in builders_on_this_host(home) if type(b).__name__ == "EcsBuilder"]
        assert reapable, "the reaper does not list ECS builders"
        removed = await reap_once(client, reapable, "queue-ecs")
        assert f"katkit-orphan-{tenant}" in removed
        task = next(t for ts in ecs_backend().tasks.values() for t in ts.values() if t.task_arn in agent.seen)
        assert task.desired_status == "STOPPED"
        hold.set()
