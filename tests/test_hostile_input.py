"""Hostile and mistaken input, as an attacker and a new user would type it: one line, exit 2, nothing written.

Every case goes through the real CLI (``starter.cli.main``) against the real dev server; "nothing started"
is checked on the server, "nothing written" on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import subprocess
import time
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from katkit.config import KatkitConfig, Settings
from katkit.gitrepo import RepoMirror
from katkit.models import CommitRunInput
from katkit.names import COMMIT_RUN, commit_run_id
from katkit.sample import SAMPLE_KATKITCONFIG, commit_files
from starter.api import Katkit
from tests.conftest import in_process_worker, status_is, wait_for
from tests.test_cli import run_cli

RUN = ("run", "--tenant", "d-taskrunner", "--repo", "taskrunner")


async def cli(*args, **kwargs) -> tuple[int, str, str]:
    """The real CLI from an async test: on a thread of its own, as it runs its own event loop."""
    return await asyncio.to_thread(run_cli, *args, **kwargs)


def files_under(root: Path) -> set[str]:
    """Every path under ``root`` except the git mirrors (a cache of the repository, not state)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "home/git" not in str(p.relative_to(root))}


async def no_run_started(client: Client, settings: Settings) -> bool:
    found = [wf async for wf in client.list_workflows(f'TaskQueue = "{settings.task_queue}"')]
    return not found


def one_error_line(err: str, *needles: str) -> None:
    assert err.startswith("katkit: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def service(name: str) -> dict[str, str]:
    return {"servicedescription/servicedescription.js": json.dumps({"Name": name, "DockerImage": "evil:<hubtag>"})}


@pytest.mark.parametrize("name", ["../p-taskrunner/taskrunner", "../../../pwned-svc", "-rf", "a/b", "svc\u0000x", ".."])
async def test_a_service_name_that_would_leave_its_directory_is_refused(
        name: str, capsys, monkeypatch, client: Client, settings: Settings, config_file: Path, repo: Path,
        tmp_path: Path) -> None:
    sha = commit_files(repo, service(name))
    before = files_under(tmp_path)
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, *RUN, "--sha", sha)
    assert code == 2 and out == "", err
    one_error_line(err, "servicedescription/servicedescription.js: Name", "not a valid service name")
    assert files_under(tmp_path) == before  # nothing written anywhere under the test's root (home included)
    assert not (tmp_path.parent / "pwned-svc.json").exists()
    assert await no_run_started(client, settings)


async def test_the_checkout_refuses_a_traversing_service_name_even_when_the_starter_is_bypassed(
        client: Client, settings: Settings, config: KatkitConfig, repo: Path, tmp_path: Path) -> None:
    """As `temporal workflow start` would: no starter checks ran, so the worker's checkout must refuse it."""
    sha = commit_files(repo, service("../p-taskrunner/taskrunner"))
    inp = CommitRunInput(tenant=config.tenant("d-taskrunner"), link=config.link("taskrunner"), sha=sha, started_by="mallory")
    async with in_process_worker(client, settings):
        kk = Katkit(client, settings, config)
        run_id = commit_run_id("d-taskrunner", "taskrunner", sha)
        await client.start_workflow(COMMIT_RUN, inp, id=run_id, task_queue=settings.task_queue,
                                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        await wait_for(lambda: status_is(kk, run_id, "failed"))
        st = await kk.status(run_id)
    assert "not a valid service name" in st.error and st.phases == [] and st.deployed is None
    assert not (settings.home / "services").exists()
    assert not any((settings.home / "builders").glob("*"))
    assert not (tmp_path.parent / "pwned-svc.json").exists()


@pytest.mark.parametrize("folder", ["../../etc", "/etc", "a/../../b", "~/x"])
def test_a_link_folder_outside_the_repo_is_a_config_error(folder: str, capsys, monkeypatch, settings: Settings,
                                                         config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text().replace('folder: ""', f"folder: {json.dumps(folder)}"))
    code, _, err = run_cli(capsys, monkeypatch, settings, bad, *RUN, "--branch", "main")
    assert code == 2
    one_error_line(err, f"{bad}: links.0.folder:", "not a folder inside the repository")


async def test_a_link_folder_that_is_a_symlink_out_of_the_repo_is_refused(
        capsys, monkeypatch, client: Client, settings: Settings, config_file: Path, repo: Path, tmp_path: Path) -> None:
    commit_files(repo, {"app/ci.sh": "#!/bin/sh\necho hi\n"})
    (repo / "outside").symlink_to("/etc")
    subprocess.run(["git", "-C", str(repo), "add", "outside"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "symlink"], check=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text().replace('folder: ""', 'folder: "outside"'))
    code, _, err = await cli(capsys, monkeypatch, settings, bad, *RUN, "--branch", "main")
    assert code == 2
    one_error_line(err, "links.0.folder", "'outside' is a symlink")
    assert await no_run_started(client, settings)


@pytest.mark.parametrize("shards", [257, 10000])
def test_parallelism_has_an_upper_bound(shards: int, capsys, monkeypatch, settings: Settings, config_file: Path,
                                        repo: Path) -> None:
    cfg = json.loads(json.dumps(SAMPLE_KATKITCONFIG))
    cfg[0]["WorkFlow"][1]["Parallelism"] = shards
    sha = commit_files(repo, {"katkitconfig.js": json.dumps(cfg)})
    code, _, err = run_cli(capsys, monkeypatch, settings, config_file, *RUN, "--sha", sha)
    assert code == 2
    one_error_line(err, f"phase 'UNIT_TEST' has Parallelism {shards} — use at most 256")


def test_parallelism_of_256_is_allowed(tmp_path: Path) -> None:
    from katkit.repofiles import parse_katkitconfig

    cfg = json.loads(json.dumps(SAMPLE_KATKITCONFIG))
    cfg[0]["WorkFlow"][1]["Parallelism"] = 256
    assert parse_katkitconfig(json.dumps(cfg), "DEV")[2][1].parallelism == 256


def _ambiguous_commits(repo: Path) -> tuple[str, list[str]]:
    """Two commits whose shas share their first 4 hex digits, both reachable (a branch each)."""
    tree = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD^{tree}"], capture_output=True, text=True).stdout.strip()
    parent = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    seen: dict[str, bytes] = {}
    for i in range(100_000):
        body = (f"tree {tree}\nparent {parent}\nauthor a <a@b> 1700000000 +0000\n"
                f"committer a <a@b> 1700000000 +0000\n\ntry {i}\n").encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        if sha[:4] in seen:
            pair = [seen[sha[:4]], body]
            break
        seen[sha[:4]] = body
    shas = []
    for n, body in enumerate(pair):
        sha = subprocess.run(["git", "-C", str(repo), "hash-object", "-t", "commit", "-w", "--stdin"], input=body,
                             capture_output=True, check=True).stdout.decode().strip()
        subprocess.run(["git", "-C", str(repo), "update-ref", f"refs/heads/amb-{n}", sha], check=True)
        shas.append(sha)
    return shas[0][:4], sorted(shas)


@pytest.mark.parametrize("mirror_has_it", [False, True])
def test_an_ambiguous_short_sha_names_the_commits_it_matches(mirror_has_it: bool, capsys, monkeypatch, settings: Settings,
                                                             config_file: Path, repo: Path, sha: str) -> None:
    prefix, shas = _ambiguous_commits(repo)
    if mirror_has_it:  # the mirror already holds both: git's lookup fails at once, without a fetch
        RepoMirror(settings.home / "git").resolve(str(repo), branch="amb-1")
    code, _, err = run_cli(capsys, monkeypatch, settings, config_file, *RUN, "--sha", prefix)
    assert code == 2
    one_error_line(err, f"sha '{prefix}' is ambiguous in", f"it matches {shas[0][:12]}, {shas[1][:12]}", "give more digits")


# -- no worker: never silent --------------------------------------------------------------------------------
async def test_without_a_worker_run_status_and_approve_say_so(capsys, monkeypatch, client: Client, settings: Settings,
                                                              config_file: Path, sha: str) -> None:
    note = f"no worker is polling task queue '{settings.task_queue}' at {settings.address}; start one with 'katkit worker'"
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "run", "--tenant", "p-taskrunner", "--repo",
                             "taskrunner", "--sha", sha)
    assert code == 0 and "started: " in out and note in err and err.count("\n") == 1, err
    run_id = commit_run_id("p-taskrunner", "taskrunner", sha)

    began = time.monotonic()
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id)
    took = time.monotonic() - began
    assert code == 0 and run_id in out and "running" in out and note in err
    assert took < 4, f"status took {took:.1f} s without a worker (a query waits ~10 s for one)"

    code, out, _ = await cli(capsys, monkeypatch, settings, config_file, "status", run_id, "--json")
    assert code == 0 and json.loads(out)["note"].startswith("no worker is polling")

    began = time.monotonic()
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "approve", run_id, "--by", "alice")
    took = time.monotonic() - began
    assert code == 1 and out == "" and err == f"katkit: error: {note} (or 'katkit dev')\n"
    assert took < 4, f"approve took {took:.1f} s without a worker"

    # a worker comes: the same run goes on, and the note is gone
    async with in_process_worker(client, settings):
        kk = Katkit(client, settings)
        await wait_for(lambda: status_is(kk, run_id, "awaiting_approval"))
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "status", run_id)
        assert code == 0 and "awaiting_approval" in out and err == ""
        code, out, err = await cli(capsys, monkeypatch, settings, config_file, "approve", run_id, "--by", "alice")
        assert code == 0 and "approved by alice" in out, err
        await wait_for(lambda: status_is(kk, run_id, "succeeded"))


async def test_run_wait_without_a_worker_shows_that_state(settings: Settings, config_file: Path, sha: str) -> None:
    from tests.conftest import cli_env
    import sys

    env = cli_env(settings, config_file)
    proc = subprocess.Popen([sys.executable, "-c", "from starter.cli import main; main()", *RUN, "--sha", sha, "--wait"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("waiting: no worker is polling" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(f"waiting: no worker is polling task queue '{settings.task_queue}'" in line for line in lines), lines
    finally:
        proc.kill()
        proc.wait()


# -- cancel, filters, config --------------------------------------------------------------------------------
@pytest.mark.usefixtures("worker")
async def test_cancel_of_an_ended_run_is_bad_input(capsys, monkeypatch, kk: Katkit, settings: Settings,
                                                   config_file: Path, sha: str) -> None:
    handle = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")
    await wait_for(lambda: status_is(kk, handle.run_id, "awaiting_approval"))
    await kk.reject(handle.run_id, "alice", "not now")
    await wait_for(lambda: status_is(kk, handle.run_id, "rejected"))
    code, out, err = await cli(capsys, monkeypatch, settings, config_file, "cancel", handle.run_id)
    assert code == 2 and out == ""
    assert err == f"katkit: error: run {handle.run_id} already ended (rejected); nothing to cancel\n"


@pytest.mark.parametrize("args, needle", [
    (["list", "--tenant", "d-wbe"], "unknown tenant 'd-wbe'"),
    (["list", "--tenant", "d-taskrunnr"], "unknown tenant 'd-taskrunnr' (did you mean 'd-taskrunner'?)"),
    (["list", "--status", "runing"], "unknown status 'runing' (did you mean 'running'?)"),
    (["locks", "--tenant", "p-taskrunnr"], "unknown tenant 'p-taskrunnr' (did you mean 'p-taskrunner'?)"),
    (["run", "--tenant", "d-taskrunnr", "--repo", "taskrunner", "--branch", "main"], "(did you mean 'd-taskrunner'?)"),
])
def test_filters_are_checked_with_a_did_you_mean(args: list[str], needle: str, capsys, monkeypatch, settings: Settings,
                                                 config_file: Path) -> None:
    code, out, err = run_cli(capsys, monkeypatch, settings, config_file, *args)
    assert code == 2 and out == ""
    one_error_line(err, needle)


def test_a_missing_config_file_says_so(capsys, monkeypatch, settings: Settings, config_file: Path) -> None:
    code, _, err = run_cli(capsys, monkeypatch, settings, config_file, "--config", "nope.yaml", *RUN, "--branch", "main")
    assert code == 2
    one_error_line(err, "katkit.yaml not found: nope.yaml")
    code, _, err = run_cli(capsys, monkeypatch, settings, config_file, "--config", "nope.yaml", "list", "--tenant", "x")
    assert code == 2
    one_error_line(err, "katkit.yaml not found: nope.yaml")


@pytest.mark.parametrize("text, needle", [
    ("tenants:\n  - name: a\n   env: DEV\n", "line 3 column 4: expected <block end>, but found '<block mapping start>'"),
    ("tenants: a: b\n", "line 1 column 11: mapping values are not allowed here"),
    ("tenants: [\n", "expected the node content, but found"),
    ("tenants:\n\t- name: a\n", "found character '\\t' that cannot start any token"),
])
def test_yaml_errors_say_what_is_wrong(text: str, needle: str, capsys, monkeypatch, settings: Settings,
                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, _, err = run_cli(capsys, monkeypatch, settings, bad, *RUN, "--branch", "main")
    assert code == 2
    one_error_line(err, f"{bad}: not valid YAML", needle)
