"""The starter's calls on tenant services: their ledgers (what ran when), rollback, and deploy locks."""

from __future__ import annotations

import getpass
import hashlib
import re
from datetime import datetime, timedelta, timezone

from temporalio.service import RPCError

from katkit.config import parse_duration
from katkit.errors import BadInput, InfraError
from katkit.models import CommitRunInput, LockState, RollbackSpec
from katkit.names import DEPLOY_LOCK, LOCK_STATE, NAME_RULE, deploy_lock_id, is_safe_name
from katkit.platforms import DeploymentRecord
from katkit.temporal import is_open
from starter.base import QUERY_DEADLINE, KatkitBase, RunHandle


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a date (``2026-11-01``, midnight UTC), a date and time (``2026-11-01T09:00Z``; no zone: UTC) or
    a duration back from now (``7d``, ``12h``, ``1h30m``)."""
    now = now or datetime.now(timezone.utc)
    value = text.strip()
    if re.fullmatch(r"(?:\d+[dhms])+", value.replace(" ", "")):
        try:
            ago = parse_duration(value)
            if isinstance(ago, timedelta):
                return now - ago
        except (ValueError, OverflowError):
            pass
        raise BadInput(f"--since {text!r} reaches back further than katkit can count; give a date such as 2026-11-01")
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise BadInput(f"--since {text!r} is neither a date/time (2026-11-01, 2026-11-01T09:00Z) nor a duration "
                       "back from now (7d, 12h, 1h30m)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


class LedgerCalls(KatkitBase):
    async def ledger(self, tenant: str, service: str) -> LockState | None:
        """A tenant service's ledger, read from its DeployLock workflow (the same from every host); None when the
        service never deployed. (Old JSON histories are merged in by the workers that have them, at their start.)"""
        self.config.tenant(tenant)
        if not is_safe_name(service):
            raise BadInput(f"--service {service!r} is not a service name; a service Name is {NAME_RULE}")
        lock_id = deploy_lock_id(self.settings.task_queue, tenant, service)
        if not await is_open(self.client, lock_id):
            return None
        await self._need_worker()
        return await self._lock_state(lock_id)

    async def _lock_state(self, lock_id: str) -> LockState:
        """A DeployLock's state (lock and ledger), asked of a worker (see ``_need_worker``) within the deadline."""
        try:
            state: LockState = await self.client.get_workflow_handle(lock_id).query(
                LOCK_STATE, result_type=LockState, rpc_timeout=QUERY_DEADLINE)
            return state
        except RPCError:
            raise InfraError(self.no_answer_note) from None

    async def deployments(self, tenant: str, service: str) -> list[DeploymentRecord]:
        """The service's deployments and rollbacks, oldest first (the last is what runs now)."""
        state = await self.ledger(tenant, service)
        return state.records if state is not None else []

    async def history(self, tenant: str, service: str | None = None,
                      since: datetime | None = None) -> dict[str, list[DeploymentRecord]]:
        """Deployments of one service, or of every service of ``tenant`` with a ledger (or an old JSON history),
        oldest first; with ``since`` only those that began at or after it (``parse_since`` reads the CLI's form)."""
        if service is not None:
            found = {service: await self.deployments(tenant, service)}
        else:
            self.config.tenant(tenant)
            names = {st.service for st in await self.locks(tenant)}
            found = {name: await self.deployments(tenant, name) for name in sorted(names)}
            found = {name: records for name, records in found.items() if records}
        if since is not None:
            found = {name: [r for r in records if r.at >= since] for name, records in found.items()}
        return found

    async def start_rollback(self, tenant: str, service: str, to_sha: str | None = None, by: str | None = None) -> RunHandle:
        """Redeploy the previous image (or the one deployed from ``to_sha``), through the tenant's gate and lock."""
        tenant_cfg = self.config.tenant(tenant)
        history = await self.deployments(tenant, service)
        if not history:
            raise BadInput(f"service {service!r} in tenant {tenant} has no deployment history; nothing to roll back to")
        current = history[-1]
        if to_sha:
            target = next((r for r in reversed(history) if r.sha.startswith(to_sha)), None)
            if target is None:
                shas = ", ".join(dict.fromkeys(r.sha[:12] for r in reversed(history)))
                raise BadInput(f"no deployment of {service} from a sha starting {to_sha!r} (deployed: {shas})")
            image, sha = target.image, target.sha
        else:
            if not current.previous_image:
                raise BadInput(f"{service} in {tenant} has no previous image; name one with --to SHA")
            image = current.previous_image
            sha = next((r.sha for r in reversed(history) if r.image == image), "")
        if image == current.image:
            raise BadInput(f"{image} is what runs now; pick another with --to SHA")
        link = next((lk for lk in self.config.links if lk.repo == current.repo), None)  # its GitHub gets the news
        inp = CommitRunInput(tenant=tenant_cfg, link=link, sha=sha, ref=f"rollback to {image}",
                             started_by=by or getpass.getuser(),
                             rollback=RollbackSpec(service=service, image=image, sha=sha, repo=current.repo))
        suffix = hashlib.sha256(image.encode()).hexdigest()[:8]
        return await self.start_prepared(inp, run_id=f"rollback-{tenant}-{service}-{suffix}")

    async def locks(self, tenant: str | None = None) -> list[LockState]:
        self.check_tenant_filter(tenant)
        query = f'WorkflowType = "{DEPLOY_LOCK}" AND ExecutionStatus = "Running" AND TaskQueue = "{self.settings.task_queue}"'
        out, asked = [], False
        async for wf in self.client.list_workflows(query):
            if not asked:
                await self._need_worker()  # once, before the first query
                asked = True
            st = await self._lock_state(wf.id)
            if tenant is None or st.tenant == tenant:
                out.append(st)
        return sorted(out, key=lambda s: (s.tenant, s.service))
