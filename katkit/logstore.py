"""Where builder logs live so that they outlive builders. A directory by default (S3 comes later).

Keys look like ``<run id>/<execution>/<phase>/<shard>.log``. A writer appends at an offset it read from
``size()``, so a resumed writer continues exactly where the store ends: no byte is lost or doubled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from katkit.errors import BadInput

if TYPE_CHECKING:
    from katkit.config import Settings


class LogStore(Protocol):
    def size(self, key: str) -> int: ...
    def write_at(self, key: str, offset: int, data: bytes) -> None: ...
    def read(self, key: str, offset: int = 0, limit: int = -1) -> bytes: ...
    def finish(self, key: str, outcome: str = "") -> None:
        """Mark the log complete, with what the writer wants remembered (a shard keeps its result there)."""

    def outcome(self, key: str) -> str | None:
        """What ``finish`` recorded, or None while the log is not finished."""

    def is_finished(self, key: str) -> bool: ...
    def keys(self, prefix: str) -> list[str]: ...
    def location(self, key: str) -> str: ...


TAIL_LINES = 20
TAIL_BYTES = 16 * 1024


def tail(store: LogStore, key: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (at most ``TAIL_BYTES`` of it), decoded leniently: what a failure shows."""
    size = store.size(key)
    data = store.read(key, max(0, size - TAIL_BYTES))
    text = data.decode("utf-8", errors="replace")
    if size > TAIL_BYTES:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


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

    def finish(self, key: str, outcome: str = "") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        tmp = Path(f"{path}.done.tmp")
        tmp.write_text(outcome)
        os.replace(tmp, f"{path}.done")

    def outcome(self, key: str) -> str | None:
        try:
            return Path(f"{self._path(key)}.done").read_text()
        except FileNotFoundError:
            return None

    def is_finished(self, key: str) -> bool:
        return Path(f"{self._path(key)}.done").exists()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / _check_key(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*.log"))

    def location(self, key: str) -> str:
        return str(self._path(key))


class S3LogStore:
    """A log store in S3 (``s3://bucket/prefix``), readable by ``katkit logs`` from any machine.

    S3 objects cannot be appended to, so a log is a series of parts ``<key>/<offset:016d>`` written in
    order; a part written again at the same offset (a resumed writer) replaces it and drops what followed.
    ``<key>.done`` marks a complete log.
    """

    def __init__(self, url: str, s3: object | None = None) -> None:
        if not url.startswith("s3://") or len(url) <= 5:
            raise BadInput(f"log store {url!r} is not s3://bucket/prefix; fix KATKIT_LOG_STORE")
        bucket, _, prefix = url[5:].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._s3: Any = s3

    @property
    def s3(self) -> Any:
        """A boto3 S3 client."""
        if self._s3 is None:
            from katkit.aws import client

            self._s3 = client("s3")
        return self._s3

    def _base(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _parts(self, key: str) -> list[tuple[int, int, str]]:
        """(offset, size, object key) of each part, in order."""
        from katkit.aws import aws_errors

        @aws_errors
        def listing() -> list[tuple[int, int, str]]:
            parts = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._base(key) + "/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[1]
                    if name.isdigit():
                        parts.append((int(name), obj["Size"], obj["Key"]))
            return sorted(parts)

        return listing()

    def size(self, key: str) -> int:
        parts = self._parts(key)
        return parts[-1][0] + parts[-1][1] if parts else 0

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        from katkit.aws import aws_errors

        @aws_errors
        def write() -> None:
            for part_offset, size, obj in self._parts(key):
                if part_offset >= offset:  # written again from here: what followed goes
                    self.s3.delete_object(Bucket=self.bucket, Key=obj)
                elif part_offset + size > offset:  # a part reaching past the offset keeps only what comes before it
                    head = self.s3.get_object(Bucket=self.bucket, Key=obj, Range=f"bytes=0-{offset - part_offset - 1}")
                    self.s3.put_object(Bucket=self.bucket, Key=obj, Body=head["Body"].read())
            self.s3.put_object(Bucket=self.bucket, Key=f"{self._base(key)}/{offset:016d}", Body=data)

        write()

    def read(self, key: str, offset: int = 0, limit: int = -1) -> bytes:
        from katkit.aws import aws_errors

        @aws_errors
        def read_parts() -> bytes:
            out = bytearray()
            for part_offset, size, obj in self._parts(key):
                if part_offset + size <= offset:
                    continue
                start = max(0, offset - part_offset)
                body = self.s3.get_object(Bucket=self.bucket, Key=obj, Range=f"bytes={start}-{size - 1}")["Body"].read()
                out += body
                if 0 <= limit <= len(out):
                    break
            return bytes(out if limit < 0 else out[:limit])

        return read_parts()

    def finish(self, key: str, outcome: str = "") -> None:
        from katkit.aws import aws_errors

        aws_errors(self.s3.put_object)(Bucket=self.bucket, Key=self._base(key) + ".done", Body=outcome.encode())

    def outcome(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=self._base(key) + ".done")["Body"].read()
            return body.decode()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            from katkit.errors import InfraError

            raise InfraError(f"S3 log store: cannot read {self._base(key)}.done: {exc}") from exc

    def is_finished(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._base(key) + ".done")
            return True
        except ClientError:
            return False

    def keys(self, prefix: str) -> list[str]:
        base = self._base(prefix) if prefix else self.prefix
        found = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                head, _, tail = obj["Key"].rpartition("/")
                if tail.isdigit() and head.endswith(".log"):
                    found.add(head[len(self.prefix) + 1:] if self.prefix else head)
        return sorted(found)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._base(key)}"


def log_store_for(settings: Settings) -> LogStore:
    """The log store the settings name: ``KATKIT_LOG_STORE=s3://bucket/prefix``, else the log directory."""
    if settings.log_store:
        return S3LogStore(settings.log_store)
    return DirLogStore(settings.logs_path)
