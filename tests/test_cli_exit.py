"""The CLI's exit code is always the truth: hundreds of real `katkit` processes against a real worker and real runs,
and every one exits with the code its command decided, never a crash while the interpreter shuts down (the Temporal
client's Rust runtime re-entering Python during finalization used to abort about 1 call in 20: exit -6 / -11)."""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from pathlib import Path

import pytest

from katkit.config import Settings
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import cli_env, status_is, wait_for

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(600)]

KATKIT = [sys.executable, "-c", "from starter.cli import main; main()"]
ROOT = Path(__file__).resolve().parent.parent
CALLS = 220  # at least 200 real processes
APPROVABLE = 3  # gated PROD runs that one `katkit approve` each really approves
CONCURRENCY = 4  # a few at a time: 2 cores, ~1 s of CPU per process
CRASH_MARKS = ("Fatal Python error", "Segmentation", "panicked", "Traceback", "core dumped")


async def test_every_cli_exit_code_is_the_truth(kk: Katkit, settings: Settings, config_file: Path, repo: Path,
                                               sha: str) -> None:
    dev = await kk.start_run("d-taskrunner", "taskrunner", sha=sha, by="bob")
    held = await kk.start_run("p-taskrunner", "taskrunner", sha=sha, by="bob")  # awaits approval all along
    approvable = []
    for i in range(APPROVABLE):
        new_sha = commit_files(repo, {"NOTES": f"release {i}\n"}, f"release {i}")
        approvable.append((await kk.start_run("p-taskrunner", "taskrunner", sha=new_sha, by="bob")).run_id)
    assert (await kk.wait(dev.run_id)).status == "succeeded"
    for run_id in [held.run_id, *approvable]:
        await wait_for(lambda run_id=run_id: status_is(kk, run_id, "awaiting_approval"), timeout=120)

    # (argv, expected exit code): success and refusal alike are true exit codes
    mix: list[tuple[list[str], int]] = [
        (["status", dev.run_id], 0),
        (["status", dev.run_id, "--json"], 0),
        (["status", held.run_id], 0),  # awaiting_approval
        (["list"], 0),
        (["list", "--json"], 0),
        (["locks"], 0),
        (["logs", dev.run_id], 0),
        (["approve", held.run_id, "--by", "bob"], 2),  # bob is no approver: refused, nothing applied
        (["status", "run-no-such-run"], 2),
    ]
    calls = [(["approve", run_id, "--by", "alice"], 0) for run_id in approvable]
    calls += [mix[i % len(mix)] for i in range(CALLS - len(calls))]
    env = cli_env(settings, config_file)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def call(argv: list[str]) -> tuple[int, bytes, bytes]:
        async with gate:
            proc = await asyncio.create_subprocess_exec(*KATKIT, *argv, env=env, cwd=ROOT,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            return proc.returncode, out, err

    started = time.monotonic()
    results = await asyncio.gather(*(call(argv) for argv, _ in calls))
    elapsed = time.monotonic() - started

    wrong = []
    tally: collections.Counter[tuple[str, int]] = collections.Counter()
    for (argv, expected), (code, out, err) in zip(calls, results):
        tally[(argv[0], code)] += 1
        text = err.decode(errors="replace")
        if code != expected or any(mark in text for mark in CRASH_MARKS):
            wrong.append(f"katkit {' '.join(argv)} -> {code} (expected {expected}): {text.strip()[:300]!r}")
        elif expected == 0:
            assert out.strip(), f"katkit {' '.join(argv)} exited 0 and printed nothing"
        else:
            assert text.startswith("katkit: error: ") and text.count("\n") == 1, text
    assert not wrong, f"{len(wrong)} of {len(calls)} exit codes are wrong ({elapsed:.0f} s):\n" + "\n".join(wrong[:20])
    assert len(results) >= 200, tally
    # what the exit codes said happened, happened: each approved run deploys, the refused one still waits
    for run_id in approvable:
        assert (await kk.wait(run_id)).status == "succeeded"
    assert (await kk.status(held.run_id)).status == "awaiting_approval"
