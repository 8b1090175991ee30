"""Freeze windows: when a tenant deploys nothing. Recurring ones come from katkit.yaml (a cron start, a time zone,
a duration); ad hoc ones (``katkit freeze``) live in the tenant's ``TenantFreezes`` workflow. Pure functions of the
time given, so every host and the starter agree on when a window is open."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from katkit.config import FreezeWindow


def window_open_at(window: FreezeWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The (start, end) of the occurrence of ``window`` open at ``now`` (aware), or None."""
    local = now.astimezone(ZoneInfo(window.timezone))
    minute = local.replace(second=0, microsecond=0)
    start: datetime = minute if croniter.match(window.start, minute) else croniter(window.start, local).get_prev(datetime)
    end = start + window.duration
    return (start, end) if start <= local < end else None


def next_start(window: FreezeWindow, now: datetime) -> datetime:
    """When ``window`` next opens after ``now``."""
    nxt: datetime = croniter(window.start, now.astimezone(ZoneInfo(window.timezone))).get_next(datetime)
    return nxt


def open_window(windows: list[FreezeWindow], now: datetime) -> tuple[FreezeWindow, datetime] | None:
    """The recurring window open at ``now`` that ends last, and its end; None when none is open."""
    found = [(w, span[1]) for w in windows if (span := window_open_at(w, now)) is not None]
    return max(found, key=lambda f: f[1]) if found else None
