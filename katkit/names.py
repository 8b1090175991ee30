"""Names in Temporal that users, scripts and the UI rely on: workflow types and ids, signals, search attributes."""

from __future__ import annotations

import re
from pathlib import Path

from temporalio.common import SearchAttributeKey

from katkit.errors import BadInput

TASK_QUEUE = "katkit"
COMMIT_RUN = "CommitRun"
PROMOTION = "Promotion"
DEPLOY_LOCK = "DeployLock"
LOCK_ACQUIRE = "acquire"
LOCK_RELEASE = "release"
LOCK_STATE = "state"
LEDGER_RECORD = "record"
LEDGER_IMPORT = "import_history"
SIGNAL_APPROVE = "approve"
SIGNAL_REJECT = "reject"
UPDATE_DECIDE = "decide"
QUERY_STATUS = "status"
TENANT_FREEZES = "TenantFreezes"
UPDATE_FREEZE = "freeze"
UPDATE_UNFREEZE = "unfreeze"
UPDATE_FREEZE_WATCH = "watch"
QUERY_FREEZES = "freezes"
SIGNAL_FREEZE_CHANGED = "freeze_changed"  # to a run waiting in a freeze: look again (an unfreeze)
UPDATE_OVERRIDE_FREEZE = "override_freeze"  # to a run: an approver breaks the glass for it

SA_TENANT = SearchAttributeKey.for_keyword("KatkitTenant")
SA_REPO = SearchAttributeKey.for_keyword("KatkitRepo")
SA_SHA = SearchAttributeKey.for_keyword("KatkitSha")
SA_PHASE = SearchAttributeKey.for_keyword("KatkitPhase")
SA_STATUS = SearchAttributeKey.for_keyword("KatkitStatus")
SEARCH_ATTRIBUTES = (SA_TENANT, SA_REPO, SA_SHA, SA_PHASE, SA_STATUS)

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
"""Names that become part of paths, container names, labels, lock ids and workflow ids: tenant, repo, service, phase."""
NAME_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"
_NAME = re.compile(NAME_PATTERN)


def is_safe_name(value: object) -> bool:
    """True for a name that is safe as a path component, container name, label value and workflow id part."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None and ".." not in value


def inside(root: Path, *parts: str) -> Path:
    """``root/parts...``, refused unless it stays inside ``root`` (symlinks resolved): defence in depth for
    paths built from names, which are validated where they are parsed."""
    path = root.joinpath(*parts)
    base, resolved = root.resolve(), path.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise BadInput(f"{'/'.join(parts)!r} would leave {root}; names may hold only {NAME_RULE}")
    return path


def commit_run_id(tenant: str, repo: str, sha: str) -> str:
    """The business key of a run: one open run per tenant, repo and sha, readable in the UI."""
    return f"run-{tenant}-{repo}-{sha[:12]}"


def log_key(run_id: str, execution: str, phase: str, shard: int, generation: int = 0) -> str:
    """Where a shard's log lives; a shard started afresh on another host (generation 1, 2, ...) writes a new one."""
    suffix = f".{generation}" if generation else ""
    return f"{_safe(run_id)}/{_safe(execution)}/{_safe(phase)}/{shard}{suffix}.log"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)


def deploy_lock_id(task_queue: str, tenant: str, service: str) -> str:
    """One deploy lock per tenant service and katkit installation (its task queue)."""
    return f"lock-{task_queue}-{tenant}-{service}"


def freezes_id(task_queue: str, tenant: str) -> str:
    """The id of a tenant's TenantFreezes workflow (its ad hoc freezes)."""
    return f"freezes-{task_queue}-{tenant}"
