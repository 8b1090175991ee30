"""Signed decisions: what an approver signs, how ``katkit approve --key`` signs it, how the workflow checks it.

A decision is signed in OpenSSH's SSHSIG format (``ssh-keygen -Y sign -n katkit``, the format git uses for
commit signing), so an approver signs with the key already on their laptop or in their ssh-agent. The signed
message is the decision with its context, as canonical JSON: run id, sha, tenant, kind, by, the comment or
reason, and when it was signed. Verification (base64, hashlib, ``cryptography``'s Ed25519) is
deterministic, and runs inside the workflow sandbox against the public keys of the run's own config snapshot.
Only ``ssh-ed25519`` keys are supported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

NAMESPACE = "katkit"  # ssh-keygen -n: a signature made for git (namespace "git") is no decision
KEY_TYPE = "ssh-ed25519"
MAX_AGE = timedelta(minutes=10)  # an older signature is a replay
MAX_AHEAD = timedelta(minutes=2)  # clock skew between the signer and the Temporal server
_ARMOR_BEGIN, _ARMOR_END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"


class ProofError(ValueError):
    """A key or signature that cannot be read, or a signature that does not prove the decision."""


def decision_message(*, run_id: str, execution: str, sha: str, tenant: str, kind: str, by: str, text: str,
                     signed_at: datetime, github: str = "") -> bytes:
    """The bytes an approver signs: the decision bound to its run and that run's execution (an attempt: a retry or
    a new run of the same sha is another), sha and tenant, and the time it was signed. ``github``: the login whose
    comment ``katkit webhook`` vouches for (it signs those)."""
    fields = {"katkit": "decision/2", "run_id": run_id, "execution": execution, "sha": sha, "tenant": tenant,
              "kind": kind, "by": by, "text": text, "signed_at": utc_text(signed_at)}
    if github:
        fields["github"] = github
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def utc_text(at: datetime) -> str:
    """A time as the signer and the workflow both write it: UTC, ISO 8601, to the microsecond."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def public_key_blob(line: str) -> bytes:
    """The key blob of an OpenSSH public key line (``ssh-ed25519 AAAA... comment``); ProofError says why not."""
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ProofError(f"{line[:40]!r} is not an SSH public key; give the line of your .pub file, e.g. "
                         "'ssh-ed25519 AAAAC3Nza... you@laptop'")
    if parts[0] != KEY_TYPE:
        raise ProofError(f"{parts[0][:40]!r} keys are not supported; katkit verifies ssh-ed25519 keys "
                         "(make one: ssh-keygen -t ed25519)")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        key_type, rest = _string(blob)
        raw, rest = _string(rest)
    except (ValueError, struct.error):
        raise ProofError(f"the ssh-ed25519 key {parts[1][:20]}... is not valid base64 key data; copy the whole line "
                         "of your .pub file") from None
    if key_type != KEY_TYPE.encode() or len(raw) != 32 or rest:
        raise ProofError(f"the ssh-ed25519 key {parts[1][:20]}... is damaged; copy the whole line of your .pub file")
    return blob


def fingerprint(blob: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _string(data: bytes) -> tuple[bytes, bytes]:
    """One SSH wire-format string (uint32 length, bytes) and what follows it."""
    (n,) = struct.unpack(">I", data[:4])
    if len(data) < 4 + n:
        raise ValueError("truncated")
    return data[4:4 + n], data[4 + n:]


def _wire(*items: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(i)) + i for i in items)


def verify(signature: str, message: bytes, keys: list[str]) -> str:
    """Check an armored SSHSIG ``signature`` of ``message`` by one of ``keys``; return that key's fingerprint.

    Pure and deterministic (allowed in the workflow sandbox). ProofError says why it proves nothing."""
    body = signature.strip()
    if not (body.startswith(_ARMOR_BEGIN) and body.endswith(_ARMOR_END)):
        raise ProofError("the signature is not an SSH signature (-----BEGIN SSH SIGNATURE-----)")
    try:
        blob = base64.b64decode("".join(body[len(_ARMOR_BEGIN):-len(_ARMOR_END)].split()), validate=True)
        if blob[:6] != b"SSHSIG" or struct.unpack(">I", blob[6:10])[0] != 1:
            raise ValueError("magic")
        public, rest = _string(blob[10:])
        namespace, rest = _string(rest)
        reserved, rest = _string(rest)
        hash_alg, rest = _string(rest)
        sig, rest = _string(rest)
        sig_type, sig_rest = _string(sig)
        raw_sig, _ = _string(sig_rest)
        key_type, key_rest = _string(public)
        raw_key, _ = _string(key_rest)
    except (ValueError, struct.error):
        raise ProofError("the signature is damaged (not SSHSIG version 1)") from None
    if namespace != NAMESPACE.encode():
        raise ProofError(f"the signature is for {namespace.decode(errors='replace')!r}, not a katkit decision "
                         f"(sign with -n {NAMESPACE})")
    if key_type != KEY_TYPE.encode() or sig_type != KEY_TYPE.encode():
        raise ProofError(f"the signature is by a {key_type.decode(errors='replace')} key; katkit verifies ssh-ed25519")
    if hash_alg not in (b"sha512", b"sha256"):
        raise ProofError(f"the signature uses hash {hash_alg.decode(errors='replace')!r}; use sha512 or sha256")
    fp = fingerprint(public)
    known = {public_key_blob(k) for k in keys}
    if public not in known:
        raise ProofError(f"signed by key {fp}, which is not one of theirs")
    digest = hashlib.sha512(message).digest() if hash_alg == b"sha512" else hashlib.sha256(message).digest()
    signed = b"SSHSIG" + _wire(namespace, reserved, hash_alg, digest)
    if not _ed25519_valid(raw_key, signed, raw_sig):
        raise ProofError(f"the signature by key {fp} does not match this decision (signed for another run, sha, "
                         "tenant, decision or text?)")
    return fp


def signer_fingerprint(signature: str) -> str:
    """The fingerprint of the key inside an armored SSHSIG signature ('' when it cannot be read)."""
    try:
        body = signature.strip()
        blob = base64.b64decode("".join(body[len(_ARMOR_BEGIN):-len(_ARMOR_END)].split()))
        public, _ = _string(blob[10:])
        return fingerprint(public)
    except (ValueError, struct.error):
        return ""


def sign_with_ssh_keygen(key_file: str, message: bytes) -> str:
    """Sign ``message`` with ``ssh-keygen -Y sign -n katkit -f KEY`` (a private key, or a public key whose private
    half is in ssh-agent); the armored SSHSIG signature. ProofError with ssh-keygen's own words on failure."""
    import subprocess
    from pathlib import Path

    path = Path(key_file).expanduser()
    if not path.is_file():
        raise ProofError(f"key file {key_file} not found; give your SSH private key, e.g. --key ~/.ssh/id_ed25519")
    try:
        proc = subprocess.run(["ssh-keygen", "-Y", "sign", "-n", NAMESPACE, "-f", str(path), "-q"], input=message,
                              capture_output=True, timeout=120)
    except FileNotFoundError:
        raise ProofError("ssh-keygen not found; install OpenSSH's client (it signs decisions)") from None
    except subprocess.TimeoutExpired:
        raise ProofError(f"ssh-keygen did not sign with {key_file} within 120 s (waiting for a passphrase?)") from None
    if proc.returncode != 0 or _ARMOR_BEGIN.encode() not in proc.stdout:
        why = " ".join(proc.stderr.decode(errors="replace").split())[:200] or f"exit {proc.returncode}"
        raise ProofError(f"cannot sign with {key_file}: {why}; give an SSH ed25519 private key (ssh-keygen -t ed25519)")
    return proc.stdout.decode()


def _ed25519_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 Ed25519 verification by ``cryptography`` (deterministic, no I/O). The workflow sandbox must pass
    ``cryptography`` through (the worker does): its Rust extension cannot be imported a second time inside it."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
