"""``katkit demo`` hands over a working setup: the real demo (``./dev.sh demo``, a katkit home and ports of its own)
leaves the dev server and a worker running, every next step it prints works as printed in a new shell (a clean
environment), and ``katkit dev --stop`` leaves no process behind. ``katkit dev`` from another katkit home refuses
that server in one line (exit 2) unless ``--join``."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from katkit.background import command_line
from katkit.config import Settings
from katkit.temporal import connect, free_port, start_dev_server
from starter.api import Katkit
from starter.demo import _demo_config_file, _print_handover
from starter.dev import background_worker, dev_server
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
KATKIT = str(ROOT / ".venv" / "bin" / "katkit")


def _new_shell_env() -> dict[str, str]:
    """What a new login shell has: no KATKIT_* variable of this test run."""
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "USER") if k in os.environ}


def _katkit_env(home: Path, port: int, ui_port: int, **extra: str) -> dict[str, str]:
    return {**_new_shell_env(), "KATKIT_HOME": str(home), "KATKIT_ADDRESS": f"127.0.0.1:{port}",
            "KATKIT_UI_URL": f"http://127.0.0.1:{ui_port}", **extra}


def _stop_leftovers(settings: Settings) -> None:
    for process in (background_worker(settings), dev_server(settings)):
        process.stop(grace=5)


def _next_steps(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("Next, in a new shell:") + 1
    steps = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        steps.append(line[2:])
    return steps


def test_demo_leaves_server_and_worker_and_its_next_steps_work(tmp_path: Path) -> None:
    home, port, ui_port = tmp_path / "home", free_port(), free_port()
    settings = Settings(home=home, address=f"127.0.0.1:{port}", ui_url=f"http://127.0.0.1:{ui_port}")
    try:
        demo = subprocess.run(["./dev.sh", "demo"], cwd=ROOT, env=_katkit_env(home, port, ui_port),
                              capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        server_pid, worker_pid = dev_server(settings).pid(), background_worker(settings).pid()
        assert server_pid and worker_pid, demo.stdout  # both still run after the demo's process is gone
        assert f"(pid {server_pid}," in demo.stdout and f"(pid {worker_pid}," in demo.stdout

        steps = _next_steps(demo.stdout)
        export, commands = steps[0], steps[1:]
        assert export.startswith("export ") and f"KATKIT_HOME={home}" in export
        assert "KATKIT_CONFIG" not in export  # the demo's katkit.yaml is the one katkit finds by itself
        assert commands[-1].startswith("./dev.sh dev --stop")
        outputs = {}
        for command in commands:  # each in a new shell, as printed
            done = subprocess.run(["bash", "-c", f"{export}\n{command}"], cwd=ROOT, env=_new_shell_env(),
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
            outputs[command.split()[1]] = done.stdout
            if command.split()[1] == "list":  # before --stop: katkit dev sees both already running, starts nothing
                again = subprocess.run(["bash", "-c", f"{export}\n./dev.sh dev"], cwd=ROOT, env=_new_shell_env(),
                                       capture_output=True, text=True, timeout=60)
                assert again.returncode == 0 and f"runs in the background already (pid {worker_pid}," in again.stdout
        assert "succeeded: taskrunner:" in outputs["run"]  # a worker was there to run it
        assert "UNIT_TEST#1|" in outputs["logs"] and "run-d-taskrunner-taskrunner-" in outputs["list"]
        assert f"stopped the worker (pid {worker_pid}) and the dev server (pid {server_pid})" in outputs["dev"]
        assert command_line(server_pid) is None and command_line(worker_pid) is None
        assert not (home / "worker.pid").exists() and not (home / "temporal-server.pid").exists()
    finally:
        _stop_leftovers(settings)


def test_demo_config_beside_a_users_own_is_exported(tmp_path: Path, monkeypatch) -> None:
    """A katkit.yaml of the user's own in the home stays; the demo's goes beside it and the export line points at it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "katkit.yaml").write_text("tenants: []\nlinks: []\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KATKIT_HOME", str(home))
    monkeypatch.setenv("KATKIT_PROG", "./dev.sh")
    demo_config = _demo_config_file(home)
    assert demo_config == home / "demo" / "katkit.yaml"
    demo_config.parent.mkdir()
    demo_config.write_text("# katkit.yaml made by 'katkit demo'\n")
    console = Console(record=True, width=400)
    _print_handover(console, Settings(home=home), demo_config, "run-d-taskrunner-taskrunner-0123456789ab")
    export = _next_steps(console.export_text())[0]
    found = subprocess.run(["bash", "-c", f"{export}\n{ROOT / '.venv/bin/python'} -c "
                            "'from katkit.config import config_path; print(config_path())'"],
                           env=_new_shell_env(), capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(demo_config), found.stderr


async def test_dev_refuses_the_server_of_another_home_unless_join(tmp_path: Path) -> None:
    port, ui_port = free_port(), free_port()
    first = Settings(home=tmp_path / "first", address=f"127.0.0.1:{port}", ui_url=f"http://127.0.0.1:{ui_port}")
    start_dev_server(first.home, port=port, ui_port=ui_port)
    joined: subprocess.Popen[str] | None = None
    try:
        second = tmp_path / "second"
        env = _katkit_env(second, port, ui_port, KATKIT_TASK_QUEUE="katkit-joined")
        for command in (["dev"], ["demo"]):
            refused = subprocess.run([KATKIT, *command], env=env, capture_output=True, text=True, timeout=60)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(
                f"katkit: error: Temporal on 127.0.0.1:{port} was not started from this katkit home ({second})")
            assert "--join" in refused.stderr and refused.stdout == ""
        assert not (second / "worker.pid").exists() and not (second / "temporal-server.pid").exists()

        joined = subprocess.Popen([KATKIT, "dev", "--join"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        kk = Katkit(await connect(first), first.model_copy(update={"task_queue": "katkit-joined"}))
        await wait_for(kk.worker_polling, timeout=60, interval=0.2)
        joined.send_signal(signal.SIGINT)
        assert joined.wait(timeout=30) == 0
        assert joined.stdout is not None and "using it" in joined.stdout.read()
    finally:
        if joined is not None and joined.poll() is None:
            joined.kill()
            joined.wait()
        _stop_leftovers(first)


def test_a_dev_server_is_never_started_on_a_port_something_listens_on(tmp_path: Path) -> None:
    """Waiting for the port to open would take whatever listens there for the new server (a leftover one)."""
    import socket

    from katkit.errors import InfraError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InfraError, match=f"127.0.0.1:{port} is in use"):
            start_dev_server(tmp_path / "srv", port=port, ui_port=free_port())
    assert not (tmp_path / "srv" / "temporal-server.pid").exists()
