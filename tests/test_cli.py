"""The katkit CLI: every bad input is one clear line, exit code 2, and nothing is started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.sample import SAMPLE_KATKITCONFIG, commit_files
from starter.cli import main
from tests.conftest import cli_env


def run_cli(capsys, monkeypatch, settings: Settings, config_file: Path, *args: str) -> tuple[int, str, str]:
    for key, value in cli_env(settings, config_file).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _config(**changes) -> str:
    cfg = json.loads(json.dumps(SAMPLE_KATKITCONFIG))
    for key, value in changes.items():
        cfg[0]["WorkFlow"][1][key] = value
    return json.dumps(cfg)


BAD_REPOS = {
    "invalid JSON": ({"katkitconfig.js": '[{"EnvName": "default",'}, "katkitconfig.js: invalid JSON at line 1"),
    "PhaseType 7": ({"katkitconfig.js": _config(PhaseType=7)}, "phase 'UNIT_TEST' has PhaseType 7 — use 4"),
    "two deployment phases": ({"katkitconfig.js": _config(PhaseType=1)}, "2 deployment phases (UNIT_TEST, DEPLOY)"),
    "Parallelism 0": ({"katkitconfig.js": _config(Parallelism=0)}, "phase 'UNIT_TEST' has Parallelism 0 — use 1 or more"),
    "BuildParams item without =": ({"katkitconfig.js": _config(BuildParams="TEST_SUITE=unit, VERBOSE")},
                                   "BuildParams item 'VERBOSE' has no '='"),
    "missing ci.sh": ({"ci.sh": None}, "ci.sh: missing at"),
    "missing servicedescription.js": ({"servicedescription/servicedescription.js": None},
                                      "servicedescription/servicedescription.js: missing at"),
    "DockerImage without <hubtag>": ({"servicedescription/servicedescription.js": '{"Name": "t", "DockerImage": "t:latest"}'},
                                     "DockerImage 't:latest' has no <hubtag>"),
}


@pytest.mark.parametrize("case", list(BAD_REPOS))
def test_bad_repo_files(case: str, capsys, monkeypatch, settings: Settings, config_file: Path, repo: Path) -> None:
    files, needle = BAD_REPOS[case]
    sha = commit_files(repo, files, f"bad: {case}")
    code, out, err = run_cli(capsys, monkeypatch, settings, config_file,
                             "run", "--tenant", "d-taskrunner", "--repo", "taskrunner", "--sha", sha)
    assert code == 2, err
    assert err.startswith("katkit: error: ") and err.count("\n") == 1 and needle in err, err
    assert out == "" and not (settings.home / "builders").exists()


BAD_ARGS = {
    "unknown tenant": (["--tenant", "x-taskrunner", "--repo", "taskrunner", "--branch", "main"], "unknown tenant 'x-taskrunner'"),
    "unknown repo": (["--tenant", "d-taskrunner", "--repo", "nope", "--branch", "main"], "unknown repo 'nope'"),
    "sha not in the repo": (["--tenant", "d-taskrunner", "--repo", "taskrunner", "--sha", "0123456789abcdef"],
                            "commit 0123456789abcdef is not in"),
    "branch not in the repo": (["--tenant", "d-taskrunner", "--repo", "taskrunner", "--branch", "nope"], "branch 'nope' is not in"),
    "no ref": (["--tenant", "d-taskrunner", "--repo", "taskrunner"], "give exactly one of --sha, --branch or --pr"),
    "missing option": (["--repo", "taskrunner"], "Missing option '--tenant'"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments(case: str, capsys, monkeypatch, settings: Settings, config_file: Path, sha: str) -> None:
    args, needle = BAD_ARGS[case]
    code, out, err = run_cli(capsys, monkeypatch, settings, config_file, "run", *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_unknown_key_in_katkit_yaml(capsys, monkeypatch, settings: Settings, tmp_path: Path, config_file: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text().replace("    platform: local\n", "    platform: local\n    colour: blue\n", 1))
    code, _, err = run_cli(capsys, monkeypatch, settings, bad, "run", "--tenant", "d-taskrunner", "--repo", "taskrunner",
                           "--branch", "main")
    assert code == 2 and err.count("\n") == 1 and "unknown key 'tenants.0.colour'" in err and str(bad) in err, err


def test_unknown_run(capsys, monkeypatch, settings: Settings, config_file: Path) -> None:
    code, _, err = run_cli(capsys, monkeypatch, settings, config_file, "status", "run-nope")
    assert code == 2 and err == "katkit: error: no run 'run-nope'; list runs with 'katkit list'\n"


def test_nothing_was_started_by_bad_input(capsys, monkeypatch, settings: Settings, config_file: Path, repo: Path) -> None:
    commit_files(repo, {"ci.sh": None})
    code, _, _ = run_cli(capsys, monkeypatch, settings, config_file, "run", "--tenant", "d-taskrunner", "--repo",
                         "taskrunner", "--branch", "main")
    assert code == 2
    code, out, _ = run_cli(capsys, monkeypatch, settings, config_file, "list", "--tenant", "d-taskrunner", "--json")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code == 0 and sha[:12] not in out


def test_cli_as_a_process_runs_and_waits(settings: Settings, config_file: Path, sha: str, tmp_path: Path) -> None:
    """The installed entry point, end to end: a subprocess worker and `katkit run --wait`, then status and logs."""
    env = cli_env(settings, config_file)
    root = Path(__file__).resolve().parent.parent
    worker = subprocess.Popen([sys.executable, str(root / "worker.py")], env=env, cwd=root,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "wb"))
    katkit = [sys.executable, "-c", "from starter.cli import main; main()"]
    try:
        run = subprocess.run([*katkit, "run", "--tenant", "d-taskrunner", "--repo", "taskrunner", "--branch", "main",
                              "--by", "bob", "--wait"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "UNIT_TEST" in run.stdout and f"succeeded: taskrunner:{sha}" in run.stdout
        run_id = f"run-d-taskrunner-taskrunner-{sha[:12]}"
        status = subprocess.run([*katkit, "status", run_id, "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["deployed"]["image"] == f"taskrunner:{sha}"
        logs = subprocess.run([*katkit, "logs", run_id, "--phase", "UNIT_TEST"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert "UNIT_TEST#1| " in logs.stdout and "UNIT_TEST#2| " in logs.stdout and "UNIT_TEST#0" not in logs.stdout
    finally:
        worker.terminate()
        worker.wait(timeout=30)
