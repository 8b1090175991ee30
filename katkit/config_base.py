"""The building blocks of katkit.yaml's models: durations, names, folders and cache paths, and ``Strict`` (unknown keys
are errors). ``katkit.config`` is where they are used (and what code imports)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from katkit.names import NAME_RULE, is_safe_name
from katkit.payload import show

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: Any) -> Any:
    """Accept ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"1h30m"``, ``"2d"``; pass timedeltas through."""
    if isinstance(value, timedelta) or value is None:
        return value
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m and any(m.groups()):
                d, h, mi, s = (int(g or 0) for g in m.groups())
                return timedelta(days=d, hours=h, minutes=mi, seconds=s)
            if re.fullmatch(r"P.*", value):  # ISO 8601, as pydantic serialises timedeltas
                return value
    except (OverflowError, ValueError):  # inf, nan, beyond timedelta's 999999999 days, beyond int's digits limit
        raise ValueError(f"{show(value)} is not a duration katkit can hold; write e.g. 90s, 15m, 24h, 1h30m or 2d") from None
    raise ValueError(f"{show(value)} is not a duration; write e.g. 90s, 15m, 24h, 1h30m or 2d")


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):  # also: its JSON form "-PT5S" would not parse back when the config crosses into a workflow
        raise ValueError("a duration may not be negative; write 0 or more, e.g. 90s, 15m, 24h, 1h30m or 2d")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_not_negative)]


def _safe_name(value: str) -> str:
    if not is_safe_name(value):
        raise ValueError(f"{value!r} is not a valid name; use {NAME_RULE}")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
"""A name that becomes part of paths, container names, labels, lock ids and workflow ids."""


def _safe_folder(value: str) -> str:
    """A folder inside the repository: relative, no '..', no empty or '.' parts (symlinks are checked at the sha)."""
    parts = value.strip("/").split("/") if value.strip("/") else []
    if value.startswith("/") or value.startswith("~") or any(p in ("", ".", "..") for p in parts) or "\0" in value \
            or "\\" in value:
        raise ValueError(f"{value!r} is not a folder inside the repository; give a relative path such as "
                         "'services/api' (no leading '/', no '..'), or \"\" for the repository root")
    return "/".join(parts)


def _cache_path(value: str) -> str:
    """A cached path: ``~/x`` (in the builder's HOME) or ``x`` (in the checkout, from the link's folder); no '..'."""
    home = value.startswith("~/")
    rest = value[2:] if home else value
    parts = rest.strip("/").split("/") if rest.strip("/") else []
    if not parts or rest.startswith("/") or rest.startswith("~") or any(p in ("", ".", "..") for p in parts) \
            or "\0" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a cache path; give one inside the checkout such as 'node_modules' or one "
                         "in the builder's home such as '~/.cache/pip' (no leading '/', no '..')")
    return ("~/" if home else "") + "/".join(parts)


CachePath = Annotated[str, AfterValidator(_cache_path)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


