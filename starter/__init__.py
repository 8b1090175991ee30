"""Start and watch katkit runs from Python; the ``katkit`` CLI is a thin layer over :class:`Katkit`."""

from starter.api import Katkit, RunHandle, RunSummary

__all__ = ["Katkit", "RunHandle", "RunSummary"]
