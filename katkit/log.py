"""structlog, configured once: JSON off a tty, the console renderer on a tty; Temporal's stdlib loggers bridged.

Bind run context with ``structlog.contextvars.bound_contextvars(run_id=..., tenant=..., phase=...)``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

_configured = False


def configure_logging(level: str | int = "INFO", *, json_logs: bool | None = None, stream: TextIO | None = None) -> None:
    global _configured
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _configured = True


def get_logger(name: str = "katkit") -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
