"""The starter's calls on freezes: set and lift a tenant's ad hoc freezes (its ``TenantFreezes`` workflow), list them
with the recurring windows of katkit.yaml, and let an approver deploy one run through a freeze."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from katkit.config import parse_duration
from katkit.errors import BadInput, InfraError
from katkit.freeze import next_start, window_open_at
from katkit.models import Decision, DecisionInput, FreezeEntry, FreezeState, UnfreezeInput
from katkit.names import QUERY_FREEZES, UPDATE_FREEZE, UPDATE_OVERRIDE_FREEZE, UPDATE_UNFREEZE, freezes_id
from katkit.temporal import freezes_start, is_open
from starter.base import QUERY_DEADLINE, KatkitBase


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """``--until``: a date and time (``2026-12-27T09:00Z``; no zone: UTC), a date (midnight UTC) or a duration from
    now (``2h``, ``3d``); it must lie ahead."""
    now = now or datetime.now(timezone.utc)
    value = text.strip()
    when: datetime | None = None
    if re.fullmatch(r"(?:\d+[dhms])+", value.replace(" ", "")):
        try:
            ahead = parse_duration(value)
            when = now + ahead if isinstance(ahead, timedelta) else None
        except (ValueError, OverflowError):
            raise BadInput(f"--until {text!r} reaches further than katkit can count; give a date such as 2026-12-27") from None
    else:
        try:
            when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
        except ValueError:
            raise BadInput(f"--until {text!r} is neither a date/time (2026-12-27T09:00Z) nor a duration from now "
                           "(2h, 3d)") from None
        when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    if when is None or when <= now:
        raise BadInput(f"--until {text!r} has passed; give a time ahead, e.g. "
                       f"{(now + timedelta(days=1)):%Y-%m-%dT%H:%MZ}")
    return when.astimezone(timezone.utc)


class FreezeCalls(KatkitBase):
    async def freeze(self, tenant: str, until: datetime, reason: str, by: str) -> FreezeState:
        """Freeze ``tenant``'s deploys until ``until`` (runs still build and test; their deploys wait or fail)."""
        self.config.tenant(tenant)
        if not by.strip():
            raise BadInput("--by is empty; name who sets the freeze")
        if until <= datetime.now(timezone.utc):
            raise BadInput(f"--until {until.isoformat()} has passed; give a time ahead")
        entry = FreezeEntry(tenant=tenant, until=until, reason=reason, by=by)
        await self._need_worker()
        try:
            state: FreezeState = await self.client.execute_update_with_start_workflow(
                UPDATE_FREEZE, entry, result_type=FreezeState, rpc_timeout=2 * QUERY_DEADLINE,
                start_workflow_operation=freezes_start(self.settings.task_queue, tenant))
            return state
        except WorkflowUpdateFailedError as exc:
            raise BadInput(f"freeze refused: {_why(exc)}") from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise InfraError(self.no_answer_note) from None

    async def unfreeze(self, tenant: str, by: str) -> list[FreezeEntry]:
        """Lift every ad hoc freeze of ``tenant`` now in force; deploys that wait for one look again. Return the lifted
        ones (recurring windows of katkit.yaml are not lifted: change the file)."""
        self.config.tenant(tenant)
        if not by.strip():
            raise BadInput("--by is empty; name who lifts the freeze")
        current = await self._adhoc(tenant)
        if not current:
            raise BadInput(f"tenant {tenant} has no ad hoc freeze in force; nothing to lift (katkit freezes --tenant "
                           f"{tenant} lists its windows)")
        try:
            state: FreezeState = await self.client.get_workflow_handle(freezes_id(self.settings.task_queue, tenant)) \
                .execute_update(UPDATE_UNFREEZE, UnfreezeInput(by=by), result_type=FreezeState,
                                rpc_timeout=2 * QUERY_DEADLINE)
        except WorkflowUpdateFailedError as exc:
            raise BadInput(f"unfreeze refused: {_why(exc)}") from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise InfraError(self.no_answer_note) from None
        return [f for f in state.lifted if f.by == by][-len(current):]

    async def freezes(self, tenant: str | None = None) -> list[FreezeEntry]:
        """Every tenant's (or ``tenant``'s) freezes: the ad hoc ones in force (who set them, why, until when) and the
        recurring windows of katkit.yaml (``in_force`` when open now, else ``next_start``)."""
        self.check_tenant_filter(tenant)
        now = datetime.now(timezone.utc)
        out: list[FreezeEntry] = []
        for t in self.config.tenants:
            if tenant is not None and t.name != tenant:
                continue
            out += await self._adhoc(t.name)
            for w in t.freezes:
                span = window_open_at(w, now)
                out.append(FreezeEntry(
                    tenant=t.name, source="window", reason=w.reason, window=f"{w.start} ({w.timezone}) for {w.duration}",
                    until=(span[1] if span else next_start(w, now) + w.duration).astimezone(timezone.utc),
                    in_force=span is not None,
                    next_start=None if span else next_start(w, now).astimezone(timezone.utc)))
        return out

    async def _adhoc(self, tenant: str) -> list[FreezeEntry]:
        wf_id = freezes_id(self.settings.task_queue, tenant)
        if not await is_open(self.client, wf_id):
            return []
        await self._need_worker()
        try:
            state: FreezeState = await self.client.get_workflow_handle(wf_id).query(
                QUERY_FREEZES, result_type=FreezeState, rpc_timeout=QUERY_DEADLINE)
        except RPCError:
            raise InfraError(self.no_answer_note) from None
        now = datetime.now(timezone.utc)
        return [f for f in state.freezes if f.until > now]

    async def override_freeze(self, run_id: str, by: str, comment: str = "") -> Decision:
        """An approver lets one run deploy through a freeze (recorded with the comment, in the run and the ledger)."""
        handle = await self._handle(run_id)
        await self._need_worker()
        try:
            decision: Decision = await handle.execute_update(
                UPDATE_OVERRIDE_FREEZE, DecisionInput(by=by, comment=comment), result_type=Decision,
                rpc_timeout=2 * QUERY_DEADLINE)
            return decision
        except WorkflowUpdateFailedError as exc:
            raise BadInput(f"override refused: {_why(exc)}") from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                raise BadInput(f"override refused: run {run_id} is not open") from None
            raise InfraError(self.no_answer_note) from None


def _why(exc: WorkflowUpdateFailedError) -> str:
    cause = exc.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause)
