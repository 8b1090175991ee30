"""Caches (issue 16, point 3): a tenant's ``cache`` paths are restored before ci.sh and saved after a shard that
succeeded, kept per tenant, repository and branch: a directory under $KATKIT_HOME/cache for the local builder, a
named volume for the Docker builder. Not shared across tenants or branches; a failed shard saves nothing."""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from pathlib import Path

import pytest

from katkit import agent
from katkit.builders import cache_scope, cache_volume
from katkit.config import parse_config
from katkit.errors import ConfigError, RunFailed
from katkit.sample import commit_files
from starter.api import Katkit

PIPELINE = json.dumps([{"EnvName": "default", "WorkFlow": [{"Name": "BUILD", "PhaseType": 4, "Order": 1,
                                                             "Parallelism": 1}]}])
# builds its "artefacts" unless the cache brought them; says which, and fails after building when told to
CI = """set -e
mkdir -p node_modules ~/.cache/kk
if [ -f node_modules/built.txt ]; then echo "restored node_modules: $(cat node_modules/built.txt)"
else echo "built node_modules"; echo "$KATKIT_TENANT $KATKIT_BRANCH $KATKIT_RUN_ID" > node_modules/built.txt; fi
if [ -f ~/.cache/kk/home.txt ]; then echo "restored home: $(cat ~/.cache/kk/home.txt)"
else echo "built home"; echo "$KATKIT_TENANT" > ~/.cache/kk/home.txt; fi
if [ -f fail ]; then exit 1; fi
"""

CONFIG = """
tenants:
  - {{name: d-a, env: DEV, cache: [node_modules, "~/.cache/kk"]}}
  - {{name: d-b, env: DEV, cache: [node_modules, "~/.cache/kk"]}}
  - {{name: d-c, env: DEV, cache: [node_modules, "~/.cache/kk"]}}
links:
  - {{repo: taskrunner, url: {url}, tenants: [d-a, d-b, d-c]}}
"""


def test_cache_paths_are_checked_and_ecs_says_it_keeps_none(caplog: pytest.LogCaptureFixture) -> None:
    tenant = parse_config("tenants:\n  - {name: a, env: DEV, cache: ['~/.cache/pip/', node_modules, a/b]}\n").tenants[0]
    assert tenant.cache == ["~/.cache/pip", "node_modules", "a/b"]
    for bad in ("/etc", "../up", "~", "~/../x", "a/../../b", "~root/x", "", "a//b", "./x"):
        with pytest.raises(ConfigError, match="is not a cache path"):
            parse_config(f"tenants:\n  - {{name: a, env: DEV, cache: ['{bad}']}}\n")
    with caplog.at_level(logging.WARNING, logger="katkit.config"):
        parse_config("tenants:\n  - {name: e, env: DEV, builder: ecs, cache: [node_modules]}\n")
    assert [r.getMessage() for r in caplog.records] == [
        "katkit.yaml: tenant e sets cache, but ECS builders keep no cache between runs; its paths are not kept"]


def test_scopes_and_volumes_are_safe_names_distinct_per_branch() -> None:
    assert cache_scope("d-a", "taskrunner", "main") == "d-a/taskrunner/main"
    slash, dash = cache_scope("d-a", "r", "feature/x"), cache_scope("d-a", "r", "feature-x")
    assert slash != dash and "/" not in slash.split("/", 2)[2] and ".." not in cache_scope("t", "r", "..")
    assert cache_volume(slash) != cache_volume(dash)
    assert all(c.isalnum() or c in "_.-" for c in cache_volume(slash))


def test_the_agent_restores_before_and_saves_after_a_success_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = commit_files(repo, {"ci.sh": CI})
    cache = {"dir": str(tmp_path / "cache"), "paths": ["node_modules", "~/.cache/kk"], "save": True}

    def run(name: str, env: dict[str, str], cache: dict[str, object]) -> str:
        spec = {"repo_url": str(repo), "sha": sha, "workspace": str(tmp_path / name), "cache": cache,
                "env": {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / f"home-{name}"), "KATKIT_TENANT": "t", **env}}
        with open(tmp_path / f"{name}.log", "wb") as out:
            agent.run(spec, out)
        return (tmp_path / f"{name}.log").read_text()

    first = run("one", {"KATKIT_RUN_ID": "r1"}, cache)
    assert "built node_modules" in first and "cache: saved node_modules" in first
    second = run("two", {"KATKIT_RUN_ID": "r2"}, cache)
    assert "restored node_modules: t  r1" in second and "restored home: t" in second, second
    assert (tmp_path / "home-two/.cache/kk/home.txt").read_text() == "t\n"  # ~ is ci.sh's HOME
    assert "cache: saved" not in run("three", {}, {**cache, "save": False})  # untrusted code: restore only
    assert sorted(p.name for p in (tmp_path / "cache" / "checkout").iterdir()) == ["node_modules"]  # nothing left aside
    assert sorted(p.name for p in (tmp_path / "cache" / "home" / ".cache").iterdir()) == ["kk"]


async def _log(ks: Katkit, run_id: str) -> str:
    return "".join(data.decode() for _, data in [x async for x in ks.follow_logs(run_id, "BUILD")])


@pytest.mark.usefixtures("worker")
async def test_a_second_run_restores_the_cache_of_its_tenant_and_branch_only(kk: Katkit, repo: Path) -> None:
    ks = Katkit(kk.client, kk.settings, parse_config(CONFIG.format(url=repo)))
    files = {"ci.sh": CI, "katkitconfig.js": PIPELINE}

    async def run(tenant: str, sha: str, **how: str) -> tuple[str, str]:
        handle = await ks.start_run(tenant, "taskrunner", sha=sha, by="bob", **how) if sha else \
            await ks.start_run(tenant, "taskrunner", by="bob", **how)
        try:
            await ks.wait(handle.run_id)
        except RunFailed:
            pass
        return handle.run_id, await _log(ks, handle.run_id)

    first_id, first = await run("d-a", commit_files(repo, {**files, "n": "1"}))
    assert "built node_modules" in first and "built home" in first and "cache: saved ~/.cache/kk" in first, first
    commit_files(repo, {"n": "2"})
    _, second = await run("d-a", "", branch="main")  # the run's branch: the same cache as a run of a sha of main
    assert f"restored node_modules: d-a main {first_id}" in second and "restored home: d-a" in second, second
    _, other_tenant = await run("d-b", commit_files(repo, {"n": "3"}))
    assert "built node_modules" in other_tenant and "built home" in other_tenant, other_tenant
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "feature/x"], check=True)
    commit_files(repo, {"n": "4"})
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)
    _, other_branch = await run("d-a", "", branch="feature/x")
    assert "built node_modules" in other_branch and "built home" in other_branch, other_branch
    # a failed shard saves nothing: the next run of d-c builds again
    _, failed = await run("d-c", commit_files(repo, {"fail": "1"}))
    assert "built node_modules" in failed and "cache: saved" not in failed, failed
    _, after = await run("d-c", commit_files(repo, {"fail": None}))
    assert "built node_modules" in after, after
    kept = kk.settings.home / "cache"
    assert sorted(str(p.relative_to(kept)) for p in kept.glob("*/*/*")) == sorted(
        ["d-a/taskrunner/main", f"d-a/taskrunner/{cache_scope('d-a', 'taskrunner', 'feature/x').split('/')[2]}",
         "d-b/taskrunner/main", "d-c/taskrunner/main"])
    assert (kept / "d-a/taskrunner/main/checkout/node_modules/built.txt").read_text().startswith("d-a main ")
    assert not (kk.settings.home / "builders").exists() or not list((kk.settings.home / "builders").iterdir())


async def test_docker_builders_keep_the_cache_in_a_volume_per_tenant_and_branch(
        client, settings, repo: Path, docker_api) -> None:
    from tests.conftest import in_process_worker

    tenant = f"d-cache-{uuid.uuid4().hex[:6]}"
    config = parse_config(f"""
tenants:
  - name: {tenant}
    env: DEV
    builder: docker
    cache: [node_modules, "~/.cache/kk"]
    docker: {{builder_network: none, tenant_network: none}}
links:
  - {{repo: taskrunner, url: {repo}, tenants: [{tenant}]}}
""")
    ks = Katkit(client, settings, config)
    try:
        async with in_process_worker(client, settings):
            logs = []
            for n in range(2):
                handle = await ks.start_run(tenant, "taskrunner", sha=commit_files(
                    repo, {"ci.sh": CI, "katkitconfig.js": PIPELINE, "n": str(n)}), by="bob")
                await ks.wait(handle.run_id)
                logs.append((handle.run_id, await _log(ks, handle.run_id)))
        assert "built node_modules" in logs[0][1] and "built home" in logs[0][1], logs[0][1]
        assert f"restored node_modules: {tenant} main {logs[0][0]}" in logs[1][1], logs[1][1]
        assert f"restored home: {tenant}" in logs[1][1], logs[1][1]
        volumes = docker_api.volumes(filters={"label": f"katkit.tenant={tenant}"})["Volumes"]
        assert [v["Name"] for v in volumes] == [cache_volume(cache_scope(tenant, "taskrunner", "main"))]
        assert not docker_api.containers(all=True, filters={"label": f"katkit.tenant={tenant}"})  # builders gone
    finally:
        for v in docker_api.volumes(filters={"label": f"katkit.tenant={tenant}"})["Volumes"] or []:
            docker_api.remove_volume(v["Name"], force=True)
