"""A sample application repository in the real DuploCloud Katkit format, for the demo, tests and benchmarks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

SAMPLE_CI_SH = """#!/usr/bin/env bash
# ci.sh of the sample "taskrunner" app: katkit runs it once per shard of every execution phase.
set -euo pipefail
echo "== $KATKIT_PHASE on $KATKIT_ENV ($KATKIT_TENANT), shard $((KATKIT_SHARD_INDEX + 1))/$KATKIT_SHARD_COUNT, commit ${KATKIT_SHA:0:12}"
case "$KATKIT_PHASE" in
  BUILD)
    echo "building taskrunner:$KATKIT_SHA (optimize=${OPTIMIZE:-no})"
    python3 -c 'import compileall, sys; sys.exit(0 if compileall.compile_dir("app", quiet=1) else 1)'
    ;;
  UNIT_TEST)
    echo "running ${TEST_SUITE:-all} tests, slice $KATKIT_SHARD_INDEX of $KATKIT_SHARD_COUNT"
    python3 app/test_tasks.py "$KATKIT_SHARD_INDEX" "$KATKIT_SHARD_COUNT"
    ;;
  *)
    echo "nothing to do for $KATKIT_PHASE"
    ;;
esac
"""

SAMPLE_APP = '''def add_task(tasks, name):
    return [*tasks, name]
'''

SAMPLE_TEST = '''import sys
sys.path.insert(0, "app")
from tasks import add_task

index, count = int(sys.argv[1]), int(sys.argv[2])
cases = [([], "a", ["a"]), (["a"], "b", ["a", "b"]), (["x"], "", ["x", ""]), ([], "z", ["z"])]
for i, (tasks, name, want) in enumerate(cases):
    if i % count == index:
        assert add_task(tasks, name) == want, (tasks, name)
        print(f"ok {i} add_task({tasks!r}, {name!r})")
'''

SAMPLE_KATKITCONFIG = [
    {
        "EnvName": "default",
        "LocalFleet": "true",
        "WorkFlow": [
            {"Name": "BUILD", "PhaseType": 4, "BuildParams": "OPTIMIZE=yes", "Order": 1, "Parallelism": 1,
             "ContinerImage": None},
            {"Name": "UNIT_TEST", "PhaseType": 4, "BuildParams": "TEST_SUITE=unit, COVERAGE=", "Order": 2,
             "Parallelism": 2, "ContinerImage": None},
            {"Name": "DEPLOY", "PhaseType": 1, "BuildParams": "", "Order": 3, "Parallelism": 1, "ContinerImage": None},
        ],
    },
    {
        "EnvName": "PROD",
        "LocalFleet": "false",
        "WorkFlow": [
            {"Name": "BUILD", "PhaseType": 4, "BuildParams": "OPTIMIZE=yes", "Order": 1, "Parallelism": 1,
             "ContinerImage": None},
            {"Name": "DEPLOY", "PhaseType": 1, "BuildParams": "", "Order": 2, "Parallelism": 1, "ContinerImage": None},
        ],
    },
]

SAMPLE_SERVICEDESCRIPTION = {
    "Name": "taskrunner",
    "DockerImage": "taskrunner:<hubtag>",
    "AllocationTags": "",
    "NetworkId": "default",
    "OtherDockerConfig": "{\"Ports\": []}",
    "HPASpecs": None,
}


def sample_files() -> dict[str, str]:
    return {
        "ci.sh": SAMPLE_CI_SH,
        "katkitconfig.js": json.dumps(SAMPLE_KATKITCONFIG, indent=2) + "\n",
        "servicedescription/servicedescription.js": json.dumps(SAMPLE_SERVICEDESCRIPTION, indent=2) + "\n",
        "app/tasks.py": SAMPLE_APP,
        "app/test_tasks.py": SAMPLE_TEST,
        "README.md": "# taskrunner\n\nA sample app for katkit.\n",
    }


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "katkit", "GIT_AUTHOR_EMAIL": "katkit@example.invalid",
           "GIT_COMMITTER_NAME": "katkit", "GIT_COMMITTER_EMAIL": "katkit@example.invalid", "PATH": "/usr/bin:/bin"}
    import os

    env["PATH"] = os.environ.get("PATH", env["PATH"])
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit_files(repo: Path, files: Mapping[str, str | None], message: str = "update", branch: str = "main") -> str:
    """Write (or, for None, delete) files in ``repo`` (made if needed), commit them, return the new sha."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "--quiet", "-b", branch)
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def make_sample_repo(repo: Path) -> str:
    """The sample app as a git repository at ``repo``; return the sha of its commit."""
    return commit_files(repo, sample_files(), "taskrunner: sample app for katkit")


SAMPLE_CONFIG_YAML = """# katkit.yaml made by 'katkit demo'
tenants:
  - name: d-taskrunner
    env: DEV
    platform: local
    builder: local
    approval: {{required: false}}
  - name: p-taskrunner
    env: PROD
    platform: local
    builder: local
    approval: {{required: true, approvers: [demo, alice], allow_self_approval: false, timeout: 24h}}
links:
  - repo: taskrunner
    url: {url}
    branch: main
    folder: ""
    tenants: [d-taskrunner, p-taskrunner]
"""
