"""Tenant secrets: declared by reference in katkit.yaml, resolved at the edge (the activity that starts a
builder, or sends a webhook), given to ci.sh as environment variables, and masked in every log line.

References (never values) travel in workflow inputs, history, memo, search attributes and the UI:

    env:VAR                  the worker's environment
    file:/run/secrets/db     a file on the worker host (one trailing newline dropped)
    aws-sm:ID[#key]          AWS Secrets Manager (a JSON key of the secret's string, when given)
    aws-ssm:/param           SSM Parameter Store, SecureString decrypted

Masking replaces each value, and its base64, URL-encoded and JSON-escaped forms and each line of a multi-line
value, by ``***``, also when a value is split across two reads of a stream (``StreamMasker``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from katkit.aws import client
from katkit.errors import BadInput, InfraError

SCHEMES = ("env", "file", "aws-sm", "aws-ssm")
REF_PATTERN = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+|aws-sm:[^#\s]+(#[^\s]+)?|aws-ssm:/\S+)$")
REF_RULE = "env:VAR, file:/path, aws-sm:ID[#key] or aws-ssm:/parameter"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIN_LENGTH = 4
MASK = b"***"


def check_ref(ref: str) -> str:
    if not REF_PATTERN.match(ref):
        raise ValueError(f"{ref!r} is not a secret reference; use {REF_RULE}")
    return ref


def resolve(ref: str, *, what: str, region: str | None = None) -> str:
    """The value ``ref`` points at. ``what`` names it in errors ("secret DB_URL of tenant p-app"): a missing secret
    is BadInput (one line, never retried), an AWS or file system fault an InfraError (retried)."""
    scheme, _, target = ref.partition(":")
    try:
        if scheme == "env":
            value = os.environ.get(target)
            if value is None:
                raise BadInput(f"{what}: {ref} is not set in the worker's environment; set {target} where the worker runs")
        elif scheme == "file":
            try:
                value = Path(target).read_text().removesuffix("\n")
            except FileNotFoundError:
                raise BadInput(f"{what}: {ref}: no such file on the worker host") from None
        elif scheme == "aws-sm":
            value = _secrets_manager(target, what, ref, region)
        elif scheme == "aws-ssm":
            value = _ssm(target, what, ref, region)
        else:
            raise BadInput(f"{what}: {ref!r} is not a secret reference; use {REF_RULE}")
    except OSError as exc:
        raise InfraError(f"{what}: {ref}: {exc.strerror or exc}") from None
    if len(value) < MIN_LENGTH:
        raise BadInput(f"{what}: the value of {ref} is shorter than {MIN_LENGTH} characters; masking it would hide "
                       "every such string in the logs: use a longer secret")
    return value


def _secrets_manager(target: str, what: str, ref: str, region: str | None) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    secret_id, _, key = target.partition("#")
    try:
        text = client("secretsmanager", region).get_secret_value(SecretId=secret_id).get("SecretString")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ResourceNotFoundException", "AccessDeniedException", "InvalidRequestException", "DecryptionFailure"):
            raise BadInput(f"{what}: {ref}: {code} ({exc.response['Error'].get('Message', '')[:120]})") from None
        raise InfraError(f"{what}: {ref}: {code}") from None
    except BotoCoreError as exc:
        raise InfraError(f"{what}: {ref}: {exc}") from None
    if text is None:
        raise BadInput(f"{what}: {ref} holds a binary secret; katkit takes string secrets")
    if not key:
        return str(text)
    try:
        found = json.loads(text)[key]
    except (ValueError, TypeError, KeyError):
        raise BadInput(f"{what}: {ref}: the secret is not a JSON object with key {key!r}") from None
    return found if isinstance(found, str) else json.dumps(found)


def _ssm(target: str, what: str, ref: str, region: str | None) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(client("ssm", region).get_parameter(Name=target, WithDecryption=True)["Parameter"]["Value"])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ParameterNotFound", "AccessDeniedException", "ParameterVersionNotFound"):
            raise BadInput(f"{what}: {ref}: {code}") from None
        raise InfraError(f"{what}: {ref}: {code}") from None
    except BotoCoreError as exc:
        raise InfraError(f"{what}: {ref}: {exc}") from None


def forms(value: str) -> set[bytes]:
    """Every form of a value that masking hides: as is, base64 (standard and URL-safe, with and without padding),
    URL-encoded, JSON-escaped, and each line of a multi-line value (lines of at least 4 characters)."""
    raw = value.encode()
    out = {raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"="),
           urllib.parse.quote(value, safe="").encode(), urllib.parse.quote_plus(value).encode(),
           json.dumps(value)[1:-1].encode(), json.dumps(value, ensure_ascii=False)[1:-1].encode()}
    for line in value.splitlines():
        if len(line.strip()) >= MIN_LENGTH:
            out |= {line.encode(), line.strip().encode()}
    return {f for f in out if len(f) >= MIN_LENGTH}


class Masker:
    """Replaces every form of the given values by ``***`` in bytes or text."""

    def __init__(self, values: Iterable[str]) -> None:
        found = sorted({f for v in values for f in forms(v)}, key=len, reverse=True)  # longest first
        self.longest = len(found[0]) if found else 0
        self._pattern = re.compile(b"|".join(re.escape(f) for f in found)) if found else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask_bytes(self, data: bytes) -> bytes:
        return self._pattern.sub(MASK, data) if self._pattern is not None else data

    def mask_text(self, text: str) -> str:
        return self.mask_bytes(text.encode()).decode(errors="replace") if self._pattern is not None else text

    def safe_prefix(self, data: bytes, final: bool) -> int:
        """How much of ``data`` can be masked and written now: all when ``final``, else all but the last bytes that
        could be the start of a value still being written (never cutting through a value found in ``data``)."""
        if final or self._pattern is None:
            return len(data)
        cut = max(0, len(data) - (self.longest - 1))
        for m in self._pattern.finditer(data):
            if m.start() < cut < m.end():
                return m.end()
            if m.start() >= cut:
                break
        return cut
