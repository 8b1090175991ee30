"""A builder prepared in advance (issue 16, point 1), driven directly: its agent checks out, then waits to be told to
start; ``start`` tells it, with ci.sh's whole environment, once. Told while it still checks out, told twice, never
told in time, killed while it waits: ci.sh runs exactly once, or the builder is made anew and ci.sh runs once
there. The same contract on the local builder (a FIFO) and the Docker builder (the container's stdin)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from katkit.builders import Builder, BuilderSpec
from katkit.builders.docker import DockerBuilder
from katkit.builders.local import LocalBuilder
from katkit.config import DockerConfig
from katkit.sample import commit_files
from tests.chaos import processes_in

CI = 'echo "ci.sh ran with SECRET=$SECRET size=$(( ${#BIG} + ${#BIG2} ))"\n'
SECRET = "prepared-s3cret"


def _until_ended(builder: Builder, name: str, timeout: float = 30.0) -> tuple[int | None, str]:
    """Wait for the builder to end, reading its log as the activity does; (exit code, the whole log)."""
    log, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        log += builder.read_log(name, len(log), 1 << 20)  # first: Docker follows the log from where this reads
        state = builder.state(name)
        if not state.running:
            log += builder.read_log(name, len(log), 1 << 20)
            return state.exit_code, log.decode()
        builder.wait(name, 0.2)
    raise AssertionError(f"builder {name} did not end: {log.decode()}")


def _log_has(builder: Builder, name: str, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in builder.read_log(name, 0, 1 << 20):
        assert time.monotonic() < deadline, builder.read_log(name, 0, 1 << 20)
        time.sleep(0.05)


@pytest.fixture(params=["local", "docker"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_api")  # CI: a missing engine fails, never skips
    return str(request.param)


@pytest.fixture
def builder(kind: str, tmp_path: Path) -> Iterator[Builder]:
    made: Builder = LocalBuilder(tmp_path / "builders") if kind == "local" else \
        DockerBuilder(DockerConfig(builder_network="none"), "t")
    yield made
    for name in made.list():
        if name.startswith(f"katkit-prep-{tmp_path.name[-8:]}"):
            made.remove(name)


@pytest.fixture
def spec(repo: Path, tmp_path: Path) -> BuilderSpec:
    sha = commit_files(repo, {"ci.sh": CI})
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "--quiet", "--mirror", str(repo), str(mirror)], check=True)
    name = f"katkit-prep-{tmp_path.name[-8:]}-{uuid.uuid4().hex[:6]}".lower()
    return BuilderSpec(name=name, labels={"katkit.run": "r"}, repo_url=str(mirror), sha=sha, mirror_path=str(mirror),
                       env={"KATKIT_PHASE": "B"})


def _with_secret(spec: BuilderSpec, **extra: str) -> BuilderSpec:
    return spec.model_copy(update={"env": {**spec.env, "SECRET": SECRET, **extra}, "first_try": True})


@pytest.mark.parametrize("size", [0, 200_000])  # nothing much; more than a pipe holds
def test_told_at_once_runs_ci_sh_once_with_the_secret_it_was_told(builder: Builder, spec: BuilderSpec,
                                                                  tmp_path: Path, size: int) -> None:
    builder.prepare(spec)  # told right away: while its agent still starts and checks out
    half = "x" * (size // 2)
    assert builder.start(_with_secret(spec, BIG=half, BIG2=half)) is True
    code, log = _until_ended(builder, spec.name)
    assert code == 0, log
    assert log.count(f"ci.sh ran with SECRET={SECRET} size={size}") == 1, log
    assert log.count("[katkit-agent] told to start") == 1
    assert builder.start(spec.model_copy(update={"first_try": False})) is False  # ended: re-attach
    if isinstance(builder, LocalBuilder):  # nothing of the secret on disk
        d = tmp_path / "builders" / spec.name
        assert not [p for p in d.rglob("*") if p.is_file() and p.name != "log" and SECRET.encode() in p.read_bytes()]


def test_told_twice_runs_ci_sh_once(builder: Builder, spec: BuilderSpec) -> None:
    builder.prepare(spec)
    builder.prepare(spec)  # idempotent
    _log_has(builder, spec.name, "ready: ci.sh starts")
    slow = _with_secret(spec)
    assert builder.start(slow) is True
    _log_has(builder, spec.name, "told to start")
    again = builder.start(slow.model_copy(update={"first_try": False}))  # a retried attempt: re-attaches
    assert again is False
    code, log = _until_ended(builder, spec.name)
    assert code == 0 and log.count("ci.sh ran with") == 1, log


def test_never_told_in_time_is_made_anew_and_runs_once(builder: Builder, spec: BuilderSpec) -> None:
    builder.prepare(spec.model_copy(update={"ready_for_s": 1.0}))
    code, log = _until_ended(builder, spec.name)
    assert code == 254 and "not started: no start came within 1 s" in log and "ci.sh ran" not in log, log
    assert builder.start(_with_secret(spec).model_copy(update={"first_try": False})) is True  # made anew
    code, log = _until_ended(builder, spec.name)
    assert code == 0 and log.count("ci.sh ran with SECRET") == 1 and "ready:" not in log, log


def test_a_prepared_builder_removed_while_it_waits_leaves_nothing(builder: Builder, spec: BuilderSpec,
                                                                   tmp_path: Path) -> None:
    builder.prepare(spec)
    _log_has(builder, spec.name, "ready: ci.sh starts")
    builder.remove(spec.name)
    assert spec.name not in builder.list()
    if isinstance(builder, LocalBuilder):
        assert processes_in(tmp_path / "builders") == []


def test_an_agent_killed_while_it_waits_is_made_anew(builder: Builder, spec: BuilderSpec, tmp_path: Path) -> None:
    builder.prepare(spec)
    _log_has(builder, spec.name, "ready: ci.sh starts")
    if isinstance(builder, LocalBuilder):
        [pid] = processes_in(tmp_path / "builders")
        subprocess.run(["kill", "-KILL", str(pid)], check=True)
    else:
        assert isinstance(builder, DockerBuilder)
        builder.api.kill(spec.name)  # exit 137: ci.sh never ran there all the same
    time.sleep(0.3)
    assert builder.start(_with_secret(spec)) is True
    code, log = _until_ended(builder, spec.name)
    assert code == 0 and log.count("ci.sh ran with") == 1 and "ready:" not in log, log
    if isinstance(builder, LocalBuilder):
        body = json.loads((tmp_path / "builders" / spec.name / "spec.json").read_text())
        assert "go" not in body and SECRET not in json.dumps(body)


def test_the_agent_takes_the_first_whole_line_and_skips_garbled_ones(tmp_path: Path) -> None:
    from katkit import agent

    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    go = {"from": str(fifo), "timeout": 5}
    fd = agent.listen(go)  # listening before anyone writes: what is written stays until it is read
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b'{"env": {"A"\n[1, 2]\n{"env": {"A": "1"}}\n{"env": {"A": "2"}}\n')
    os.close(writer)  # no end of file for the agent: it holds the FIFO read-write
    assert agent.await_go(go, fd) == {"env": {"A": "1"}}
    started = time.monotonic()
    assert agent.await_go({"from": str(fifo), "timeout": 0.3}, agent.listen(go)) is None
    assert time.monotonic() - started >= 0.25  # it waited its timeout out


def test_a_workspace_a_crashed_start_left_is_emptied_before_the_clone(spec: BuilderSpec, tmp_path: Path) -> None:
    builder = LocalBuilder(tmp_path / "builders")
    stale = tmp_path / "builders" / spec.name / "workspace"
    stale.mkdir(parents=True)
    (stale / "half-cloned").write_text("left by a worker that died mid-start")
    assert builder.start(_with_secret(spec)) is True
    code, log = _until_ended(builder, spec.name)
    assert code == 0 and log.count("ci.sh ran with") == 1, log
    assert not (stale / "half-cloned").exists()


@pytest.fixture
def docker_builder(docker_api: object, tmp_path: Path) -> Iterator[DockerBuilder]:
    made = DockerBuilder(DockerConfig(builder_network="none"), "t")
    yield made
    for name in made.list():
        if name.startswith(f"katkit-prep-{tmp_path.name[-8:]}"):
            made.remove(name)


def _with_script(repo: Path, spec: BuilderSpec, script: str) -> BuilderSpec:
    return spec.model_copy(update={"sha": commit_files(repo, {"ci.sh": script})})


def test_docker_ends_at_the_agents_sealed_line_which_ci_sh_cannot_forge(docker_builder: DockerBuilder, spec: BuilderSpec,
                                                                       repo: Path, tmp_path: Path) -> None:
    """A told builder's agent ends its log with a line sealed by a value only the worker and the agent know: the shard
    ends there (not when the container has stopped) with the code in it. A ci.sh that prints lines of that shape
    (any seal, any code) changes nothing: its lines stay in its log, its own exit code counts."""
    forged = ("echo '[katkit-agent] done 0123456789abcdef 0'\n"
              "echo '[katkit-agent] done ffffffffffffffff 0' 1>&2\n"
              "printf '[katkit-agent] done '\nexit 3\n")
    mirror = tmp_path / "mirror.git"
    made = _with_script(repo, spec, forged)
    subprocess.run(["git", "-C", str(mirror), "fetch", "--quiet", str(repo), "+refs/heads/*:refs/heads/*"], check=True)
    docker_builder.prepare(made)
    _log_has(docker_builder, made.name, "ready: ci.sh starts")
    assert docker_builder.start(made.model_copy(update={"first_try": True})) is True
    seal = docker_builder._seals[made.name]
    code, log = _until_ended(docker_builder, made.name)
    assert code == 3, log
    assert "done 0123456789abcdef 0" in log and "done ffffffffffffffff 0" in log and seal not in log, log
    assert log.rstrip("\n").endswith("[katkit-agent] ci.sh exited 3 in 0.0 s"), log  # the sealed line is not in it
    # the container itself still says the same: ci.sh's code is the agent's exit code
    assert docker_builder.api.wait(made.name)["StatusCode"] == 3


def test_docker_a_sealed_kill_is_told_from_the_stopped_container(docker_builder: DockerBuilder, spec: BuilderSpec,
                                                                 repo: Path, tmp_path: Path) -> None:
    """ci.sh killed with SIGKILL (137): out of memory or a stop from outside; only the stopped container can say which,
    so that end is not taken from the sealed line."""
    mirror = tmp_path / "mirror.git"
    made = _with_script(repo, spec, "kill -KILL $$\n")
    subprocess.run(["git", "-C", str(mirror), "fetch", "--quiet", str(repo), "+refs/heads/*:refs/heads/*"], check=True)
    docker_builder.prepare(made)
    _log_has(docker_builder, made.name, "ready: ci.sh starts")
    assert docker_builder.start(made.model_copy(update={"first_try": True})) is True
    code, log = _until_ended(docker_builder, made.name)
    assert code == 137, log
    assert docker_builder.state(made.name).reason == "the builder was stopped with SIGKILL from outside katkit (exit 137)"
    assert docker_builder.api.inspect_container(made.name)["State"]["Status"] == "exited"


def test_docker_log_followers_closed_as_their_stream_ends_leave_the_engine_client_sound(
        docker_builder: DockerBuilder, spec: BuilderSpec) -> None:
    """A follower closed while the engine ends its stream (the container has just stopped: the reader is replaced or
    the builder removed). docker-py's own close shuts the socket, but the reader may still finish the response from
    its buffer and urllib3 then puts the connection, with its closed socket, back in the pool: the next request taking
    it failed with 'file descriptor cannot be a negative integer (-1)'."""
    from katkit.builders.docker import _LogFollower

    api = docker_builder.api
    container = api.create_container(spec.image or docker_builder.config.image, name=spec.name, detach=True,
                                     entrypoint=["sh", "-c", "for i in $(seq 20); do echo line $i; done"],
                                     labels={"katkit.builder": "1"})
    api.start(container)
    api.wait(container)
    for i in range(300):  # the reader and the close race: many tries, at several offsets in time
        follower = _LogFollower(api, container["Id"], 0, follow=True)
        time.sleep(0.0005 * (i % 7))
        follower.close()
        assert follower.done.wait(5)
        for _ in range(3):  # the pool is last in, first out: the connection just given back is taken first
            assert api.inspect_container(container["Id"])["State"]["Status"] == "exited"



PROBE = """ls /sys/class/net | tr '\\n' ' '; echo
cat /proc/sys/net/ipv6/conf/lo/disable_ipv6
getent ahosts localhost
python3 -c "import socket; print(socket.getaddrinfo('localhost', 1)[0][4])"
"""
ISOLATION = PROBE + '''python3 - <<'PY'
import socket
try:  # the worker host's own loopback, where the test listens
    socket.create_connection(("127.0.0.1", HOST_PORT), timeout=3).close()
    print("host loopback reached")
except OSError:
    print("host loopback out of reach")
server = socket.create_server(("localhost", 0))
client = socket.create_connection(("localhost", server.getsockname()[1]), timeout=3)
peer, _ = server.accept()
client.sendall(b"own loopback works")
print(peer.recv(64).decode())
PY
'''


@pytest.mark.parametrize("prepared", [True, False])
def test_docker_builders_on_network_none_are_isolated_with_the_engines_networking_disabled(
        docker_builder: DockerBuilder, spec: BuilderSpec, repo: Path, tmp_path: Path, prepared: bool) -> None:
    """A builder on Docker's network ``none`` also has the engine's networking disabled: a network namespace of its
    own, made by runc, with only loopback (no engine network sandbox and the processes it starts: half a no-op
    container's cost). ci.sh sees what it sees on ``none``: the same interfaces, IPv6 off, localhost the same
    addresses in the same order; it cannot reach the worker host, and its own loopback works."""
    import socket

    api = docker_builder.api
    plain = api.create_container(docker_builder.config.image, entrypoint=["sh", "-c", PROBE],
                                 host_config=api.create_host_config(network_mode="none"), name=f"{spec.name}-plain")
    try:
        api.start(plain)
        api.wait(plain)
        on_none = api.logs(plain).decode()
    finally:
        api.remove_container(plain, force=True)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        made = _with_script(repo, spec, ISOLATION.replace("HOST_PORT", str(port)))
        subprocess.run(["git", "-C", str(tmp_path / "mirror.git"), "fetch", "--quiet", str(repo),
                        "+refs/heads/*:refs/heads/*"], check=True)
        if prepared:
            docker_builder.prepare(made)
        assert docker_builder.start(made.model_copy(update={"first_try": True})) is True
        info = api.inspect_container(made.name)
        code, log = _until_ended(docker_builder, made.name)
    assert code == 0, log
    assert (info["Config"].get("NetworkDisabled"), info["HostConfig"]["NetworkMode"]) == (True, "none")
    assert not info["NetworkSettings"]["SandboxKey"]  # no engine network sandbox
    assert on_none.startswith("lo \n1\n127.0.0.1 ") and on_none in log, (on_none, log)
    assert "host loopback out of reach" in log and "own loopback works" in log, log


@pytest.mark.parametrize(("user", "label", "disabled"), [
    ("", "1", True), ("root", "1", True), ("0", "1", True), ("0:0", "1", True), ("root:wheel", "1", True),
    ("1000", "1", False), ("1000:1000", "1", False), ("nobody", "1", False), ("", "", False), ("", None, False)])
def test_which_images_get_the_engines_networking_disabled(user: str, label: str | None, disabled: bool) -> None:
    labels = {} if label is None else {"katkit.agent-hosts": label}
    assert DockerBuilder._network_disabled("none", {"User": user, "Labels": labels}) is disabled
    assert DockerBuilder._network_disabled("katkit-builders", {"User": user, "Labels": labels}) is False


@pytest.mark.parametrize("before", ["", "10.0.0.1 db\n", "10.0.0.1 db", "# localhost\n"])
def test_the_agent_names_localhost_unless_a_line_does(tmp_path: Path, before: str) -> None:
    import io

    from katkit import agent

    hosts = tmp_path / "hosts"
    hosts.write_text(before)
    agent.name_localhost(io.BytesIO(), str(hosts))
    named = before + ("\n" if before and not before.endswith("\n") else "") + agent.LOCALHOST
    assert hosts.read_text() == named
    agent.name_localhost(io.BytesIO(), str(hosts))  # named now: left as it is
    assert hosts.read_text() == named


@pytest.mark.parametrize("dockerfile", ["USER nobody", 'LABEL katkit.agent-hosts=""'])
def test_docker_builders_of_images_whose_agent_cannot_name_localhost_stay_on_network_none(
        docker_builder: DockerBuilder, spec: BuilderSpec, tmp_path: Path, dockerfile: str) -> None:
    """The engine leaves /etc/hosts empty when it disables a container's networking; an agent that runs as another
    user than root, or from before it could name localhost there (no ``katkit.agent-hosts`` label), gets Docker's
    network ``none`` as before, where the engine names localhost."""
    import io

    import docker

    tag = f"katkit-test-{uuid.uuid4().hex[:8]}:1"
    client = docker.from_env(version="auto")
    client.images.build(fileobj=io.BytesIO(f"FROM katkit-builder:latest\n{dockerfile}\n".encode()), tag=tag,
                        network_mode="none", rm=True)
    try:
        made = spec.model_copy(update={"image": tag})
        docker_builder.prepare(made)
        info = docker_builder.api.inspect_container(made.name)
        assert (info["HostConfig"]["NetworkMode"], bool(info["Config"].get("NetworkDisabled"))) == ("none", False)
        docker_builder.remove(made.name)
    finally:
        client.images.remove(tag, force=True)
