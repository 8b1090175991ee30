"""Where builder logs live so that they outlive builders. A directory by default (S3 comes later).

Keys look like ``<run id>/<execution>/<phase>/<shard>.log``. A writer appends at an offset it read from
``size()``, so a resumed writer continues exactly where the store ends: no byte is lost or doubled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from katkit.errors import BadInput


class LogStore(Protocol):
    def size(self, key: str) -> int: ...
    def write_at(self, key: str, offset: int, data: bytes) -> None: ...
    def read(self, key: str, offset: int = 0, limit: int = -1) -> bytes: ...
    def finish(self, key: str) -> None: ...
    def is_finished(self, key: str) -> bool: ...
    def keys(self, prefix: str) -> list[str]: ...
    def location(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    if key.startswith("/") or ".." in key.split("/"):
        raise BadInput(f"log key {key!r} is not a relative path")
    return key


class DirLogStore:
    """A log store in a local (or shared) directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, offset)
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def read(self, key: str, offset: int = 0, limit: int = -1) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def finish(self, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        Path(f"{path}.done").touch()

    def is_finished(self, key: str) -> bool:
        return Path(f"{self._path(key)}.done").exists()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / _check_key(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*.log"))

    def location(self, key: str) -> str:
        return str(self._path(key))
