"""The Docker builder and the Docker platform against a real dockerd (CI runs these with KATKIT_REQUIRE_DOCKER=1).

Containers use network "none" (builders, services) so nothing here sends traffic anywhere.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from katkit.builders import BuilderSpec
from katkit.builders.docker import DockerBuilder
from katkit.config import DockerConfig, KatkitConfig, Settings, parse_config
from katkit.errors import BadInput, InfraError, RunFailed
from katkit.platforms.docker import SERVICE_LABEL, TENANT_LABEL
from katkit.reaper import reap_once
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import wait_for
from tests.test_worker_crash import start_worker

APP = """import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("greeting:", os.environ.get("GREETING", "<none>"), flush=True)
while True:
    time.sleep(1)
"""
DOCKERFILE = 'FROM katkit-base:bookworm\nCOPY app.py /app.py\nCMD ["python3", "-u", "/app.py"]\n'
CRASHING_DOCKERFILE = 'FROM katkit-base:bookworm\nCMD ["python3", "-c", "print(\\"boom: no config\\"); raise SystemExit(1)"]\n'
CI = """#!/usr/bin/env bash
set -eu
case "$KATKIT_PHASE" in
  BUILD) docker build --network none -q -t "$IMAGE:$KATKIT_SHA" . ;;
  TEST)  echo "test shard $KATKIT_SHARD_INDEX of $KATKIT_SHARD_COUNT"; docker image inspect "$IMAGE:$KATKIT_SHA" >/dev/null ;;
  SLOW)  for i in $(seq 1 40); do echo "line $i"; sleep 0.25; done ;;
  HANG)  echo hanging; sleep 600 ;;
  OOM)   python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))' ;;
  *)     echo "phase $KATKIT_PHASE" ;;
esac
"""

pytestmark = pytest.mark.usefixtures("docker_api")


def phase(name: str, order: int, ptype: int = 4, params: str = "", parallelism: int = 1, image: str | None = None) -> dict:
    return {"Name": name, "PhaseType": ptype, "BuildParams": params, "Order": order, "Parallelism": parallelism,
            "ContinerImage": image}


@pytest.fixture
def tenant() -> str:
    return f"dock-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def image_repo(tenant: str) -> str:
    return f"sample-{tenant}"


@pytest.fixture
def docker_config(repo: Path, tenant: str, sha: str) -> KatkitConfig:
    return parse_config(f"""
tenants:
  - name: {tenant}
    env: DEV
    builder: docker
    platform: docker
    phase_timeout: 5m
    docker: {{builder_network: none, tenant_network: none, docker_socket: true, settle: 1s, health_timeout: 30s}}
links:
  - repo: sample
    url: {repo}
    tenants: [{tenant}]
""")


@pytest.fixture
async def dk(client, settings: Settings, docker_config: KatkitConfig, docker_api, tenant: str, image_repo: str):
    yield Katkit(client, settings, docker_config)
    for c in docker_api.containers(all=True, filters={"label": f"katkit.tenant={tenant}"}):
        docker_api.remove_container(c["Id"], force=True)
    for img in docker_api.images(name=image_repo):
        docker_api.remove_image(img["Id"], force=True)


def build_image(tag: str, dockerfile: str, tmp_path: Path) -> None:
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:6]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "app.py").write_text(APP)
    subprocess.run(["docker", "build", "--network", "none", "-q", "-t", tag, str(ctx)], check=True, capture_output=True)


def sample_files(image_repo: str, *phases: dict) -> dict[str, str]:
    return {
        "ci.sh": CI,
        "Dockerfile": DOCKERFILE,
        "app.py": APP,
        "katkitconfig.js": json.dumps([{"EnvName": "default", "LocalFleet": "false", "WorkFlow": list(phases)}]),
        "servicedescription/servicedescription.js": json.dumps({"Name": "sample", "DockerImage": f"{image_repo}:<hubtag>"}),
    }


def run_service(docker_api, tenant: str, image: str, n: int, env: dict[str, str]) -> list[str]:
    ids = []
    for _ in range(n):
        c = docker_api.create_container(image, labels={TENANT_LABEL: tenant, SERVICE_LABEL: "sample"}, environment=env,
                                        host_config=docker_api.create_host_config(network_mode="none"))
        docker_api.start(c["Id"])
        ids.append(c["Id"])
    return ids


def service_containers(docker_api, tenant: str) -> list[dict]:
    return [docker_api.inspect_container(c["Id"])
            for c in docker_api.containers(filters={"label": [f"{TENANT_LABEL}={tenant}", f"{SERVICE_LABEL}=sample"]})]


def builders(docker_api, tenant: str) -> list[dict]:
    return docker_api.containers(all=True, filters={"label": ["katkit.builder", f"katkit.tenant={tenant}"]})


@pytest.mark.usefixtures("worker")
async def test_build_test_and_roll_a_service_keeping_env_and_replicas(dk: Katkit, docker_api, repo: Path, tenant: str,
                                                                       image_repo: str, tmp_path: Path, home: Path) -> None:
    build_image(f"{image_repo}:old", DOCKERFILE, tmp_path)
    old_ids = run_service(docker_api, tenant, f"{image_repo}:old", 2, {"GREETING": "hi"})
    sha = commit_files(repo, sample_files(image_repo, phase("BUILD", 1, params=f"IMAGE={image_repo}"),
                                          phase("TEST", 2, params=f"IMAGE={image_repo}", parallelism=2),
                                          phase("DEPLOY", 3, ptype=1)))
    handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
    st = await dk.wait(handle.run_id)
    assert st.status == "succeeded" and st.deployed is not None
    assert (st.deployed.image, st.deployed.replicas, st.deployed.previous_image) == (f"{image_repo}:{sha}", 2, f"{image_repo}:old")
    running = service_containers(docker_api, tenant)
    assert len(running) == 2 and {c["Config"]["Image"] for c in running} == {f"{image_repo}:{sha}"}
    assert all("GREETING=hi" in c["Config"]["Env"] for c in running)
    assert not any(c["Id"] in old_ids for c in running)
    assert builders(docker_api, tenant) == []
    logs = {label: data.decode() async for label, data in dk.follow_logs(handle.run_id)}
    assert "test shard 0 of 2" in logs["TEST#1"] and "test shard 1 of 2" in logs["TEST#2"]
    history = await dk.deployments(tenant, "sample")
    assert [(h.previous_image, h.image, h.started_by) for h in history] == [(f"{image_repo}:old", f"{image_repo}:{sha}", "bob")]


@pytest.mark.usefixtures("worker")
async def test_ci_failure_removes_the_builder(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str) -> None:
    sha = commit_files(repo, {**sample_files(image_repo, phase("BUILD", 1)), "ci.sh": "echo failing; exit 7\n"})
    with pytest.raises(RunFailed, match="ci.sh exited 7"):
        await dk.wait((await dk.start_run(tenant, "sample", sha=sha, by="bob")).run_id)
    assert builders(docker_api, tenant) == []


@pytest.mark.usefixtures("worker")
async def test_fast_exit_logs_are_complete(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str) -> None:
    ci = "for i in $(seq 1 2000); do echo \"fast line $i\"; done\n"
    sha = commit_files(repo, {**sample_files(image_repo, phase("BUILD", 1)), "ci.sh": ci})
    handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
    await dk.wait(handle.run_id)
    log = b"".join([d async for _, d in dk.follow_logs(handle.run_id)]).decode()
    assert [line for line in log.splitlines() if line.startswith("fast line")] == [f"fast line {i}" for i in range(1, 2001)]


@pytest.mark.usefixtures("worker")
async def test_hung_ci_sh_is_killed_at_the_phase_timeout(client, settings, docker_config: KatkitConfig, docker_api,
                                                         repo: Path, tenant: str, image_repo: str) -> None:
    from datetime import timedelta

    docker_config.tenant(tenant).phase_timeout = timedelta(seconds=3)
    dk = Katkit(client, settings, docker_config)
    sha = commit_files(repo, sample_files(image_repo, phase("HANG", 1)))
    with pytest.raises(RunFailed, match="timed out after the phase timeout of 3 s"):
        await dk.wait((await dk.start_run(tenant, "sample", sha=sha, by="bob")).run_id)
    assert builders(docker_api, tenant) == []


@pytest.mark.usefixtures("worker")
async def test_cancel_mid_phase_removes_the_container(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str) -> None:
    sha = commit_files(repo, sample_files(image_repo, phase("HANG", 1)))
    handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
    await wait_for(lambda: builders(docker_api, tenant))
    await dk.cancel(handle.run_id)
    with pytest.raises(RunFailed, match="cancelled"):
        await dk.wait(handle.run_id)
    assert builders(docker_api, tenant) == []  # gone before the run closed, not 10 s later


@pytest.mark.usefixtures("worker")
async def test_oom_killed_builder_fails_the_phase_saying_so(client, settings, docker_config: KatkitConfig, docker_api,
                                                            repo: Path, tenant: str, image_repo: str) -> None:
    docker_config.tenant(tenant).docker.memory = "64m"
    dk = Katkit(client, settings, docker_config)
    sha = commit_files(repo, sample_files(image_repo, phase("OOM", 1)))
    with pytest.raises(RunFailed) as info:
        await dk.wait((await dk.start_run(tenant, "sample", sha=sha, by="bob")).run_id)
    assert "out of memory" in str(info.value) or "exited 137" in str(info.value), info.value
    assert builders(docker_api, tenant) == []


@pytest.mark.usefixtures("worker")
async def test_externally_killed_builder_fails_the_phase_saying_so(dk: Katkit, docker_api, repo: Path, tenant: str,
                                                                   image_repo: str) -> None:
    sha = commit_files(repo, sample_files(image_repo, phase("HANG", 1)))
    handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
    found = await wait_for(lambda: builders(docker_api, tenant))
    await wait_for(lambda: b"hanging" in docker_api.logs(found[0]["Id"]))
    docker_api.kill(found[0]["Id"])
    with pytest.raises(RunFailed, match="stopped with SIGKILL from outside katkit"):
        await dk.wait(handle.run_id)


@pytest.mark.usefixtures("worker")
async def test_missing_image_at_deploy(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str) -> None:
    sha = commit_files(repo, sample_files(image_repo, phase("NOOP", 1), phase("DEPLOY", 2, ptype=1)))
    with pytest.raises(RunFailed, match=f"image {image_repo}:{sha} not found — did a build phase build it\\?"):
        await dk.wait((await dk.start_run(tenant, "sample", sha=sha, by="bob")).run_id)
    assert service_containers(docker_api, tenant) == []


@pytest.mark.usefixtures("worker")
async def test_failed_rollout_keeps_the_old_replicas(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str,
                                                     tmp_path: Path) -> None:
    build_image(f"{image_repo}:old", DOCKERFILE, tmp_path)
    old_ids = run_service(docker_api, tenant, f"{image_repo}:old", 2, {"GREETING": "hi"})
    sha = commit_files(repo, sample_files(image_repo, phase("NOOP", 1), phase("DEPLOY", 2, ptype=1)))
    build_image(f"{image_repo}:{sha}", CRASHING_DOCKERFILE, tmp_path)
    with pytest.raises(RunFailed, match="rollout of .* failed: replica 0 exited .*boom: no config.*the old replicas keep serving"):
        await dk.wait((await dk.start_run(tenant, "sample", sha=sha, by="bob")).run_id)
    running = service_containers(docker_api, tenant)
    assert sorted(c["Id"] for c in running) == sorted(old_ids)
    assert docker_api.containers(all=True, filters={"label": [f"{TENANT_LABEL}={tenant}", "katkit.deployed_by_run"]}) == []


async def test_missing_builder_image_is_bad_input_before_anything_starts(dk: Katkit, docker_api, repo: Path, tenant: str,
                                                                        image_repo: str) -> None:
    sha = commit_files(repo, sample_files(image_repo, phase("BUILD", 1, image="no-such-image:1")))
    with pytest.raises(BadInput, match="builder image 'no-such-image:1' is not on the Docker engine"):
        await dk.start_run(tenant, "sample", sha=sha, by="bob")
    assert builders(docker_api, tenant) == []


@pytest.mark.usefixtures("worker")
async def test_local_fleet_picks_the_network(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str, docker_config) -> None:
    docker_config.tenant(tenant).docker.tenant_network = "host"  # LocalFleet true joins the tenant's network
    docker_config.tenant(tenant).docker.cpus, docker_config.tenant(tenant).docker.memory = 0.5, "256m"
    # network none: the engine's networking disabled, the same isolation (test_prepared_builders)
    for local_fleet, expected in (("true", ("host", False)), ("false", ("none", True))):
        files = sample_files(image_repo, phase("HANG", 1))
        cfg = json.loads(files["katkitconfig.js"])
        cfg[0]["LocalFleet"] = local_fleet
        sha = commit_files(repo, {**files, "katkitconfig.js": json.dumps(cfg)})
        handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
        found = await wait_for(lambda: builders(docker_api, tenant))
        info = docker_api.inspect_container(found[0]["Id"])
        host_config, disabled = info["HostConfig"], bool(info["Config"].get("NetworkDisabled"))
        assert ((host_config["NetworkMode"], disabled), host_config["NanoCpus"], host_config["Memory"]) == \
            (expected, 500_000_000, 256 << 20)
        await dk.cancel(handle.run_id)
        with pytest.raises(RunFailed):
            await dk.wait(handle.run_id)


@pytest.mark.usefixtures("worker")
async def test_twenty_concurrent_runs_leave_no_container(dk: Katkit, docker_api, repo: Path, tenant: str, image_repo: str) -> None:
    shas = [commit_files(repo, {**sample_files(image_repo, phase("NOOP", 1)), "n.txt": str(i)}) for i in range(20)]
    handles = await asyncio.gather(*(dk.start_run(tenant, "sample", sha=s, by="bob") for s in shas))
    results = await asyncio.gather(*(dk.wait(h.run_id, interval=1.0) for h in handles))
    assert [r.status for r in results] == ["succeeded"] * 20
    assert builders(docker_api, tenant) == []
    assert docker_api.containers(all=True, filters={"label": "katkit.builder"}) == []


async def test_sigkilled_worker_reattaches_to_the_one_container(client, settings: Settings, docker_config: KatkitConfig,
                                                                docker_api, dk: Katkit, repo: Path, tenant: str,
                                                                image_repo: str, tmp_path: Path) -> None:
    sha = commit_files(repo, sample_files(image_repo, phase("BUILD0", 1), phase("SLOW", 2)))
    since = int(time.time()) - 1
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
        slow = await wait_for(lambda: [c for c in builders(docker_api, tenant) if c["Labels"].get("katkit.phase") == "SLOW"])
        await wait_for(lambda: b"line 8" in docker_api.logs(slow[0]["Id"]))
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(settings, tmp_path / "w2.log")
        st = await dk.wait(handle.run_id, interval=0.5)
        assert st.status == "succeeded" and st.phases[1].shards[0].reattached
        events = docker_api.events(since=since, until=int(time.time()) + 1, decode=True,
                                   filters={"event": "create", "label": f"katkit.tenant={tenant}"})
        created = [e["Actor"]["Attributes"]["katkit.phase"] for e in events]
        assert sorted(created) == ["BUILD0", "SLOW"]  # one container ever for each shard
        log = b"".join([d async for _, d in dk.follow_logs(handle.run_id, "SLOW")]).decode()
        assert [line for line in log.splitlines() if line.startswith("line ")] == [f"line {i}" for i in range(1, 41)]
        assert builders(docker_api, tenant) == []
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


async def test_orphan_reaper_removes_builders_of_closed_runs(client, docker_api, tenant: str, repo: Path, sha: str) -> None:
    builder = DockerBuilder(DockerConfig(builder_network="none"), tenant)
    mine = {"katkit.tenant": tenant, "katkit.run": f"run-gone-{tenant}", "katkit.execution": "",
            "katkit.namespace": client.namespace, "katkit.task_queue": "queue-a"}
    theirs = {**mine, "katkit.task_queue": "another-installation"}
    for name, labels in ((f"katkit-orphan-{tenant}", mine), (f"katkit-foreign-{tenant}", theirs)):
        builder.start(BuilderSpec(name=name, labels=labels, repo_url=str(repo), sha=sha, env={"KATKIT_PHASE": "HANG"}))
    try:
        removed = await reap_once(client, [builder], "queue-a")
        assert removed == [f"katkit-orphan-{tenant}"]
        assert [c["Names"][0].lstrip("/") for c in builders(docker_api, tenant)] == [f"katkit-foreign-{tenant}"]
    finally:
        builder.remove(f"katkit-orphan-{tenant}")
        builder.remove(f"katkit-foreign-{tenant}")


def test_engine_down_is_one_line_and_retryable(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/katkit-no-such-docker.sock")
    import katkit.builders.docker as docker_module

    monkeypatch.setattr(docker_module, "_client", None)
    with pytest.raises(InfraError) as info:
        DockerBuilder(DockerConfig(), "t").check_image(None)
    assert "unix:///tmp/katkit-no-such-docker.sock" in str(info.value) and "is dockerd running?" in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(docker_module, "_client", None)  # the next test gets the real engine back


async def test_deploy_interrupted_by_a_worker_crash_ends_with_one_set_of_replicas(
        settings: Settings, docker_config: KatkitConfig, docker_api, dk: Katkit, repo: Path, tenant: str,
        image_repo: str, tmp_path: Path) -> None:
    from datetime import timedelta

    docker_config.tenant(tenant).docker.settle = timedelta(seconds=8)  # a long health wait to crash in
    build_image(f"{image_repo}:old", DOCKERFILE, tmp_path)
    run_service(docker_api, tenant, f"{image_repo}:old", 2, {"GREETING": "hi"})
    sha = commit_files(repo, sample_files(image_repo, phase("NOOP", 1), phase("DEPLOY", 2, ptype=1)))
    build_image(f"{image_repo}:{sha}", DOCKERFILE, tmp_path)
    since = int(time.time()) - 1
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
        new = [f"{TENANT_LABEL}={tenant}", "katkit.deployed_by_run"]
        await wait_for(lambda: len(docker_api.containers(filters={"label": new})) == 2)
        first.send_signal(signal.SIGKILL)  # both sets run now: the old replicas and the new, not yet healthy
        first.wait()
        second = start_worker(settings, tmp_path / "w2.log")
        st = await dk.wait(handle.run_id, interval=0.5)
        assert st.status == "succeeded" and st.deployed is not None and st.deployed.previous_image == f"{image_repo}:old"
        running = service_containers(docker_api, tenant)
        assert len(running) == 2 and {c["Config"]["Image"] for c in running} == {f"{image_repo}:{sha}"}
        assert all("GREETING=hi" in c["Config"]["Env"] for c in running)
        events = docker_api.events(since=since, until=int(time.time()) + 1, decode=True,
                                   filters={"event": "create", "label": new})
        assert len(list(events)) == 2  # the resumed deploy took over the replicas it had started
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


async def _lock_of(dk: Katkit, tenant: str):
    found = await dk.locks(tenant)
    return found[0] if found else None


async def _holds(dk: Katkit, tenant: str, run_id: str) -> bool:
    lock = await _lock_of(dk, tenant)
    return lock is not None and lock.holder is not None and lock.holder.run_id == run_id


async def _waits(dk: Katkit, tenant: str, run_id: str) -> bool:
    lock = await _lock_of(dk, tenant)
    return lock is not None and run_id in [w.run_id for w in lock.waiters]


async def _deploy_runs(dk: Katkit, docker_api, repo: Path, image_repo: str, tmp_path: Path, n: int) -> list[str]:
    shas = []
    for i in range(n):
        sha = commit_files(repo, {**sample_files(image_repo, phase("DEPLOY", 1, ptype=1)), "n.txt": str(i)})
        build_image(f"{image_repo}:{sha}", DOCKERFILE, tmp_path)
        shas.append(sha)
    return shas


@pytest.mark.usefixtures("worker")
async def test_two_approved_deploys_are_serialized_in_arrival_order(client, settings, docker_config: KatkitConfig,
                                                                    docker_api, repo: Path, tenant: str,
                                                                    image_repo: str, tmp_path: Path, dk: Katkit) -> None:
    from datetime import timedelta

    t = docker_config.tenant(tenant)
    t.docker.settle = timedelta(seconds=5)  # long enough to see the second run queued behind the first
    t.approval.required, t.approval.approvers = True, ["alice"]
    first_sha, second_sha = await _deploy_runs(dk, docker_api, repo, image_repo, tmp_path, 2)
    runs = []
    for sha in (first_sha, second_sha):
        handle = await dk.start_run(tenant, "sample", sha=sha, by="bob")
        await wait_for(lambda: _status(dk, handle.run_id, "awaiting_approval"))
        runs.append(handle.run_id)
    await asyncio.gather(dk.approve(runs[0], "alice"), dk.approve(runs[1], "alice"))  # approved at once
    lock = await wait_for(lambda: _holder_and_one_waiter(dk, tenant))
    order = [lock.holder.run_id, lock.waiters[0].run_id]  # arrival order at the lock: whichever came first holds
    assert sorted(order) == sorted(runs)
    first, second = [await dk.wait(r) for r in order]
    assert first.deployed.started_at < first.deployed.deployed_at <= second.deployed.started_at < second.deployed.deployed_at
    assert second.deployed.lock_waited_s > 1.0 and first.deployed.lock_waited_s < 1.0
    assert second.deployed.previous_image == first.deployed.image
    running = service_containers(docker_api, tenant)
    assert len(running) == 1 and running[0]["Config"]["Image"] == second.deployed.image


async def _holder_and_one_waiter(dk: Katkit, tenant: str):
    lock = await _lock_of(dk, tenant)
    return lock if lock is not None and lock.holder is not None and len(lock.waiters) == 1 else None


async def _status(dk: Katkit, run_id: str, status: str) -> bool:
    return (await dk.status(run_id)).status == status


@pytest.mark.usefixtures("worker")
async def test_supersede_cancels_the_older_waiter(client, settings, docker_config: KatkitConfig, docker_api, repo: Path,
                                                  tenant: str, image_repo: str, tmp_path: Path, dk: Katkit) -> None:
    from datetime import timedelta

    t = docker_config.tenant(tenant)
    t.docker.settle, t.deploy_lock = timedelta(seconds=4), "supersede"
    shas = await _deploy_runs(dk, docker_api, repo, image_repo, tmp_path, 3)
    a = await dk.start_run(tenant, "sample", sha=shas[0], by="bob")
    await wait_for(lambda: _holds(dk, tenant, a.run_id))
    b = await dk.start_run(tenant, "sample", sha=shas[1], by="bob")
    await wait_for(lambda: _waits(dk, tenant, b.run_id))
    c = await dk.start_run(tenant, "sample", sha=shas[2], by="bob")
    with pytest.raises(RunFailed, match="cancelled"):
        await dk.wait(b.run_id)
    st_b = await dk.status(b.run_id)
    assert st_b.status == "cancelled" and f"superseded by newer run {c.run_id}" in st_b.error and st_b.deployed is None
    st_a, st_c = await dk.wait(a.run_id), await dk.wait(c.run_id)
    assert st_a.deployed.deployed_at <= st_c.deployed.started_at  # the running one finished first
    running = service_containers(docker_api, tenant)
    assert {r["Config"]["Image"] for r in running} == {f"{image_repo}:{shas[2]}"}


async def test_lock_is_released_when_the_holders_worker_is_killed(settings: Settings, docker_config: KatkitConfig,
                                                                  docker_api, dk: Katkit, repo: Path, tenant: str,
                                                                  image_repo: str, tmp_path: Path) -> None:
    from datetime import timedelta

    docker_config.tenant(tenant).docker.settle = timedelta(seconds=6)
    shas = await _deploy_runs(dk, docker_api, repo, image_repo, tmp_path, 2)
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        a = await dk.start_run(tenant, "sample", sha=shas[0], by="bob")
        await wait_for(lambda: _holds(dk, tenant, a.run_id))
        b = await dk.start_run(tenant, "sample", sha=shas[1], by="bob")
        await wait_for(lambda: _waits(dk, tenant, b.run_id))
        first.send_signal(signal.SIGKILL)  # the holder's worker dies mid-deploy, a waiter queued behind it
        first.wait()
        second = start_worker(settings, tmp_path / "w2.log")
        st_a, st_b = await dk.wait(a.run_id, interval=0.5), await dk.wait(b.run_id, interval=0.5)
        assert st_a.deployed.deployed_at <= st_b.deployed.started_at
        lock = await _lock_of(dk, tenant)
        assert lock is None or (lock.holder is None and lock.waiters == [])
        running = service_containers(docker_api, tenant)
        assert {r["Config"]["Image"] for r in running} == {f"{image_repo}:{shas[1]}"}
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


@pytest.mark.usefixtures("worker")
async def test_a_failed_smoke_test_puts_the_previous_image_back(client, settings: Settings, docker_config: KatkitConfig,
                                                                docker_api, repo: Path, tenant: str, image_repo: str,
                                                                tmp_path: Path) -> None:
    """on_post_deploy_failure: rollback on the Docker platform: the previous image runs again, env and replicas kept."""
    docker_config.tenant(tenant).on_post_deploy_failure = "rollback"
    dk = Katkit(client, settings, docker_config)
    build_image(f"{image_repo}:old", DOCKERFILE, tmp_path)
    run_service(docker_api, tenant, f"{image_repo}:old", 2, {"GREETING": "hi"})
    smoke_ci = CI.replace("  *)", '  SMOKE) test -f smoke_ok || { echo "smoke: /health answered 500"; exit 5; } ;;\n  *)')
    phases = (phase("BUILD", 1, params=f"IMAGE={image_repo}"), phase("DEPLOY", 2, ptype=1), phase("SMOKE", 3))
    good = commit_files(repo, {**sample_files(image_repo, *phases), "ci.sh": smoke_ci, "smoke_ok": "yes\n"})
    assert (await dk.wait((await dk.start_run(tenant, "sample", sha=good, by="bob")).run_id)).status == "succeeded"
    bad = commit_files(repo, {"smoke_ok": None, "CHANGES.md": "v2\n"})
    handle = await dk.start_run(tenant, "sample", sha=bad, by="bob")
    try:
        with pytest.raises(RunFailed, match=rf"phase SMOKE failed: .*\(rolled back to {image_repo}:{good}\)"):
            await dk.wait(handle.run_id)
        running = service_containers(docker_api, tenant)
        assert len(running) == 2 and {c["Config"]["Image"] for c in running} == {f"{image_repo}:{good}"}
        assert all("GREETING=hi" in c["Config"]["Env"] for c in running)
        st = await dk.status(handle.run_id)
        assert st.rolled_back is not None and st.rolled_back.previous_image == f"{image_repo}:{bad}"
        last = (await dk.deployments(tenant, "sample"))[-1]
        assert (last.kind, last.image, last.started_by, last.failed_phase) == (
            "auto_rollback", f"{image_repo}:{good}", "katkit", "SMOKE")
        assert builders(docker_api, tenant) == []
    finally:
        for c in docker_api.containers(all=True, filters={"label": f"katkit.tenant={tenant}"}):
            docker_api.remove_container(c["Id"], force=True)
        for img in docker_api.images(name=image_repo):
            docker_api.remove_image(img["Id"], force=True)
