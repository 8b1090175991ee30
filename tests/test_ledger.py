"""Each tenant service's ledger lives in Temporal (its DeployLock workflow), not on one worker's disk.

Two hosts are two katkit homes on one task queue: what one deployed, the other rolls back, and a starter
with a third home reads the same history. An old JSON history is imported once.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from temporalio.worker import Replayer

from katkit.config import KatkitConfig, Settings
from katkit.platforms import DeploymentRecord, RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import commit_files
from katkit.temporal import DATA_CONVERTER
from starter.api import Katkit
from tests.conftest import in_process_worker, wait_for
from tests.test_hostile_input import cli
from workflows import CommitRun, DeployLock, Promotion

HISTORIES = Path(__file__).parent / "histories"


async def _images(kk: Katkit) -> list[str]:
    return [r.image for r in await kk.deployments("d-taskrunner", "taskrunner")]


def on_host(settings: Settings, name: str) -> Settings:
    """The same installation (task queue, server) seen from another host: a katkit home of its own."""
    home = settings.home.parent / f"host-{name}"
    home.mkdir(exist_ok=True)
    return settings.model_copy(update={"home": home, "log_dir": settings.home.parent / "shared-logs"})


async def test_the_ledger_is_the_same_from_every_host(client, settings: Settings, config: KatkitConfig, repo: Path,
                                                      sha: str, capsys, monkeypatch, config_file: Path) -> None:
    a, b, c = on_host(settings, "a"), on_host(settings, "b"), on_host(settings, "c")
    sha2 = commit_files(repo, {"CHANGES.md": "v2\n"})
    async with in_process_worker(client, a):  # host a deploys twice
        kk_a = Katkit(client, a, config)
        for s in (sha, sha2):
            await kk_a.wait((await kk_a.start_run("d-taskrunner", "taskrunner", sha=s, by="dave")).run_id)
    assert not (b.home / "services").exists()
    async with in_process_worker(client, b):  # host b, which never deployed, rolls back from the ledger
        kk_b = Katkit(client, b, config)
        LocalPlatform(b.home / "services").put("d-taskrunner", RunningService(
            name="taskrunner", image=f"taskrunner:{sha2}", extra_config="GREETING=hi", replicas=2))
        st = await kk_b.wait((await kk_b.start_rollback("d-taskrunner", "taskrunner", by="erin")).run_id)
        assert st.deployed is not None and st.deployed.image == f"taskrunner:{sha}"
        assert st.deployed.previous_image == f"taskrunner:{sha2}"
        kk_c = Katkit(client, c, config)  # a starter on a third machine reads the same ledger
        records = await kk_c.deployments("d-taskrunner", "taskrunner")
        assert [(r.kind, r.image, r.previous_image, r.started_by) for r in records] == [
            ("deploy", f"taskrunner:{sha}", None, "dave"),
            ("deploy", f"taskrunner:{sha2}", f"taskrunner:{sha}", "dave"),
            ("rollback", f"taskrunner:{sha}", f"taskrunner:{sha2}", "erin")]
        assert all(r.execution for r in records)
        # `katkit history` from host c, as JSON and as a table
        monkeypatch.setenv("KATKIT_HOME", str(c.home))
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "d-taskrunner",
                                   "--json")
        monkeypatch.setenv("KATKIT_HOME", str(c.home))
        assert code == 0, err
        rows = json.loads(out)
        assert [(r["service"], r["kind"], r["running_now"]) for r in rows] == [
            ("taskrunner", "deploy", False), ("taskrunner", "deploy", False), ("taskrunner", "rollback", True)]
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "history", "--tenant", "d-taskrunner",
                                   "--service", "taskrunner")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["SERVICE", "WHEN", "(UTC)", "KIND"]
        assert "rollback" in lines[1] and "running now" in lines[1] and "erin" in lines[1]
    for host in (a, b):  # no platform wrote a history on its own disk
        for f in (host.home / "services").rglob("*.json") if (host.home / "services").exists() else []:
            assert "history" not in json.loads(f.read_text()), f


async def test_an_old_json_history_is_imported_once(client, settings: Settings, config: KatkitConfig, sha: str) -> None:
    old = [DeploymentRecord(run_id=f"run-old-{i}", sha=f"{i}" * 40, previous_image=f"taskrunner:v{i - 1}" if i else None,
                            image=f"taskrunner:v{i}", replicas=1, started_by="legacy",
                            at=datetime(2026, 1, 1 + i, tzinfo=timezone.utc)) for i in range(3)]
    folder = settings.home / "services" / "d-taskrunner"
    folder.mkdir(parents=True)
    (folder / "taskrunner.json").write_text(json.dumps({
        "current": RunningService(name="taskrunner", image="taskrunner:v2").model_dump(mode="json"),
        "history": [r.model_dump(mode="json") for r in old]}))
    kk = Katkit(client, settings, config)
    async with in_process_worker(client, settings):  # the worker that has the file offers it at start
        images = await wait_for(lambda: _images(kk))
        assert images == [r.image for r in old]
    async with in_process_worker(client, settings):  # offered again at the next start: taken once
        await asyncio.sleep(1)
        assert await _images(kk) == [r.image for r in old]
        st = await kk.wait((await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="dave")).run_id)
        assert st.deployed is not None and st.deployed.previous_image == "taskrunner:v2"
        records = await kk.deployments("d-taskrunner", "taskrunner")
        assert [r.image for r in records] == ["taskrunner:v0", "taskrunner:v1", "taskrunner:v2", f"taskrunner:{sha}"]
        lock_id = f"lock-{settings.task_queue}-d-taskrunner-taskrunner"
        history = await client.get_workflow_handle(lock_id).fetch_history()
    await Replayer(workflows=[CommitRun, DeployLock, Promotion], data_converter=DATA_CONVERTER).replay_workflow(history)
    if os.environ.get("KATKIT_RECORD_HISTORIES") == "1":
        (HISTORIES / "ledger1_import_and_record.json").write_text(history.to_json())


async def test_a_deploy_recorded_before_the_ledger_existed_is_imported_by_the_deploy(
        client, settings: Settings, config: KatkitConfig, sha: str) -> None:
    """No one read the history first: the first deploy after an upgrade brings the old records along."""
    old = DeploymentRecord(run_id="run-old", sha="0" * 40, previous_image=None, image="taskrunner:v0", replicas=1,
                           started_by="legacy", at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    folder = settings.home / "services" / "d-taskrunner"
    folder.mkdir(parents=True)
    (folder / "taskrunner.json").write_text(json.dumps({"current": None, "history": [old.model_dump(mode="json")]}))
    async with in_process_worker(client, settings):
        kk = Katkit(client, settings, config)
        await kk.wait((await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="dave")).run_id)
        records = await kk.deployments("d-taskrunner", "taskrunner")
    assert [r.image for r in records] == ["taskrunner:v0", f"taskrunner:{sha}"]
    assert records[1].previous_image == "taskrunner:v0"
