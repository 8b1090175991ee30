"""``katkit audit RUN``: one run's decision trail, read from its Temporal history and checked against the run's status.

The history is what the server recorded (the run's input, every signal and accepted update, every activity and
timer, how it closed); the status is what the run itself says (its result, or its query while it runs). The trail
is told from the first and checked against the second, so it cannot disagree with what happened unnoticed: every
difference is listed in ``AuditTrail.disagreements`` (the CLI then exits 1).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from katkit.errors import BadInput
from katkit.models import (CommitRunInput, DecisionInput, DeployInput, DeployResult, FreezeCheck, RunPlan, RunStatus,
                           ShardResult)
from katkit.names import (COMMIT_RUN, SIGNAL_APPROVE, SIGNAL_FREEZE_CHANGED, SIGNAL_REJECT, UPDATE_DECIDE,
                          UPDATE_OVERRIDE_FREEZE)
from katkit.states import LIVE, DeployKind, State
from katkit.temporal import DATA_CONVERTER
from starter.status import StatusCalls


class AuditEntry(BaseModel):
    at: datetime
    what: str = Field(description="started, decision, checkout, shard, wait, deploy, deployed, webhook, ended, ...")
    text: str


class AuditTrail(BaseModel):
    run_id: str
    status: State
    entries: list[AuditEntry] = Field(default_factory=list)
    disagreements: list[str] = Field(default_factory=list, description="where history and the run's status differ")
    note: str = Field("", description="why the trail could not be checked (no worker answered for an open run)")

    @property
    def consistent(self) -> bool:
        return not self.disagreements and not self.note


class AuditCalls(StatusCalls):
    async def audit(self, run_id: str) -> AuditTrail:
        """The run's decision trail from its history, checked against its status (result or query)."""
        handle = self.client.get_workflow_handle(run_id)
        desc = await self._describe(handle)
        if desc.workflow_type != COMMIT_RUN:
            raise BadInput(f"{run_id} is a {desc.workflow_type}, not a run; audit one of its runs "
                           f"(katkit status {run_id} lists them)")
        history = await handle.fetch_history()
        status = await self.status(run_id)
        return audit_trail(history, status)


def _values(payloads: Payloads | None) -> list[Any]:
    return DATA_CONVERTER.payload_converter.from_payloads(list(payloads.payloads)) if payloads else []


def _one(payloads: Payloads | None, model: type[Any]) -> Any:
    values = _values(payloads)
    return model.model_validate(values[0]) if values else None


def _freeze_checked(check: FreezeCheck | None, frozen: bool, at: datetime,
                    add: Callable[[AuditEntry], None]) -> bool:
    """The entry a freeze check's result makes (held by a freeze, or going ahead after one); whether frozen now."""
    found = (check or FreezeCheck()).freeze
    if found is not None:
        add(AuditEntry(at=at, what="frozen", text=f"deploy held: frozen until {found.until:%Y-%m-%d %H:%M} UTC"
                                                  + (f" by {found.by}" if found.by else f" (window {found.window})")
                                                  + (f": {found.reason}" if found.reason else "")))
        return True
    if frozen:
        add(AuditEntry(at=at, what="frozen", text="no freeze in force any more: the deploy goes ahead"))
    return False


def _summary(event: HistoryEvent) -> str:
    payload: Payload = event.user_metadata.summary
    if not payload.data:
        return ""
    value = DATA_CONVERTER.payload_converter.from_payloads([payload])[0]
    return str(value)


def _seconds(d: timedelta) -> str:
    s = d.total_seconds()
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def audit_trail(history: WorkflowHistory, status: RunStatus) -> AuditTrail:
    """Tell the run from its history; list where that disagrees with ``status``."""
    trail = AuditTrail(run_id=history.workflow_id, status=status.status, note=status.note)
    add = trail.entries.append
    inp: CommitRunInput | None = None
    scheduled: dict[int, tuple[str, str, Any]] = {}  # event id -> (activity type, summary, input)
    timers: dict[str, timedelta] = {}
    decisions: list[tuple[str, str]] = []  # (kind, by) in the order the run received them
    overrides: list[str] = []  # who let the run deploy through a freeze
    frozen = False  # the last freeze check found a freeze
    deployed: DeployResult | None = None
    rolled_back: DeployResult | None = None
    ended: tuple[str, str] | None = None  # (how, message)
    a: Any  # the event's attributes, of the type its kind says
    for event in history.events:
        at = event.event_time.ToDatetime().replace(tzinfo=None)
        at = at.replace(tzinfo=status.started_at.tzinfo) if status.started_at else at
        kind = event.WhichOneof("attributes")
        if kind == "workflow_execution_started_event_attributes":
            a = event.workflow_execution_started_event_attributes
            inp = _one(a.input, CommitRunInput)
            assert inp is not None
            parent = f"; step of {a.parent_workflow_execution.workflow_id}" if a.parent_workflow_execution.workflow_id else ""
            what = (f"rollback of {inp.rollback.service} to {inp.rollback.image}" if inp.rollback
                    else f"{inp.repo}@{inp.sha} ({inp.ref or 'sha'})")
            add(AuditEntry(at=at, what="started", text=f"by {inp.started_by}: {what} in {inp.tenant.name} "
                                                        f"(client {a.identity or '?'}{parent})"))
        elif kind == "workflow_execution_signaled_event_attributes":
            a = event.workflow_execution_signaled_event_attributes
            if a.signal_name in (SIGNAL_APPROVE, SIGNAL_REJECT):
                d = _one(a.input, DecisionInput) or DecisionInput()
                decisions.append((a.signal_name, d.by))
                add(AuditEntry(at=at, what="decision", text=f"{a.signal_name} by {d.by or '?'} (signal)"))
            elif a.signal_name == SIGNAL_FREEZE_CHANGED:
                add(AuditEntry(at=at, what="frozen", text="a freeze was lifted (katkit unfreeze): look again"))
            else:
                add(AuditEntry(at=at, what="signal", text=f"signal {a.signal_name} (identity {a.identity or '?'})"))
        elif kind == "workflow_execution_update_accepted_event_attributes":
            a = event.workflow_execution_update_accepted_event_attributes
            req = a.accepted_request
            args = _values(req.input.args)
            if req.input.name == UPDATE_OVERRIDE_FREEZE and args:
                d = DecisionInput.model_validate(args[0])
                overrides.append(d.by)
                add(AuditEntry(at=at, what="override", text=f"freeze overridden by {d.by}"
                                                            + (f" — {d.comment}" if d.comment else "")))
            elif req.input.name == UPDATE_DECIDE and len(args) == 2:
                d = DecisionInput.model_validate(args[1])
                decisions.append((str(args[0]), d.by))
                add(AuditEntry(at=at, what="decision", text=f"{args[0]} by {d.by or '?'} (katkit CLI/API)"))
            else:
                add(AuditEntry(at=at, what="update", text=f"update {req.input.name}"))
        elif kind == "activity_task_scheduled_event_attributes":
            a = event.activity_task_scheduled_event_attributes
            value = _one(a.input, DeployInput) if a.activity_type.name == "deploy" else None
            scheduled[event.event_id] = (a.activity_type.name, _summary(event), value)
            if value is not None:
                who = "katkit" if value.kind == DeployKind.AUTO_ROLLBACK else value.started_by
                add(AuditEntry(at=at, what="deploy", text=f"{value.kind} of {value.service} -> {value.image} asked "
                                                          f"(started by {who}"
                                                          + (f", approved by {', '.join(value.approved_by)}"
                                                             if value.approved_by else "")
                                                          + (f", after {value.failed_phase} failed"
                                                             if value.failed_phase else "") + ")"))
        elif kind == "activity_task_completed_event_attributes":
            a = event.activity_task_completed_event_attributes
            name, summary, asked = scheduled.get(a.scheduled_event_id, ("?", "", None))
            if name == "deploy":
                result = _one(a.result, DeployResult)
                if result.lock_waited_s >= 0.5:
                    add(AuditEntry(at=at, what="wait", text=f"waited {result.lock_waited_s:.1f} s for the deploy lock "
                                                            f"of {result.service}"))
                add(AuditEntry(at=at, what="deployed", text=f"{asked.kind if asked else 'deploy'}: {result.image} runs "
                                                            f"({result.replicas} replica(s)), previously "
                                                            f"{result.previous_image or 'nothing'}"))
                if asked is not None and asked.kind == DeployKind.AUTO_ROLLBACK:
                    rolled_back = result
                else:
                    deployed = result
            elif name == "run_shard":
                shard = _one(a.result, ShardResult)
                add(AuditEntry(at=at, what="shard", text=shard.summary or f"{summary}: exit {shard.exit_code}"))
            elif name == "checkout":
                plan = _one(a.result, RunPlan)
                add(AuditEntry(at=at, what="checkout", text=f"{plan.sha[:12]}: phases "
                                                            f"{', '.join(p.name for p in plan.phases)} "
                                                            f"(katkitconfig.js entry {plan.env_entry})"))
            elif name == "freeze_check":
                frozen = _freeze_checked(_one(a.result, FreezeCheck), frozen, at, add)
            elif name == "notify":
                add(AuditEntry(at=at, what="webhook", text=f"{summary} delivered"))
        elif kind == "marker_recorded_event_attributes":  # a local activity: the freeze check
            m = event.marker_recorded_event_attributes
            if m.marker_name == "core_local_activity" and "data" in m.details and "result" in m.details:
                data = _values(m.details["data"])
                if data and isinstance(data[0], dict) and data[0].get("activity_type") == "freeze_check":
                    frozen = _freeze_checked(_one(m.details["result"], FreezeCheck), frozen, at, add)
        elif kind == "activity_task_failed_event_attributes":
            a = event.activity_task_failed_event_attributes
            name, summary, _ = scheduled.get(a.scheduled_event_id, ("?", "", None))
            add(AuditEntry(at=at, what="failed", text=f"{summary or name}: {a.failure.message}"))
        elif kind == "timer_started_event_attributes":
            a = event.timer_started_event_attributes
            timers[a.timer_id] = a.start_to_fire_timeout.ToTimedelta()
        elif kind == "timer_fired_event_attributes":
            a = event.timer_fired_event_attributes
            took = timers.get(a.timer_id, timedelta(0))
            label = "the freeze" if frozen else "the approval timeout" if inp and inp.tenant.approval.timeout == took \
                else "the wait timer"
            add(AuditEntry(at=at, what="wait", text=f"waited {_seconds(took)} ({label})"))
        elif kind == "workflow_execution_completed_event_attributes":
            ended = ("completed", "")
        elif kind == "workflow_execution_failed_event_attributes":
            ended = ("failed", event.workflow_execution_failed_event_attributes.failure.message)
        elif kind == "workflow_execution_canceled_event_attributes":
            ended = ("cancelled", "")
        elif kind == "workflow_execution_terminated_event_attributes":
            ended = ("terminated", event.workflow_execution_terminated_event_attributes.reason)
        elif kind == "workflow_execution_timed_out_event_attributes":
            ended = ("timed out", "")
        if ended is not None:
            add(AuditEntry(at=at, what="ended", text=ended[0] + (f": {ended[1]}" if ended[1] else "")))
            break
    _verdicts(trail, status)
    if not trail.note:
        trail.disagreements = _disagreements(inp, decisions, deployed, rolled_back, ended, status)
        said = [o.by for o in status.freeze.overrides]
        if overrides != said:
            trail.disagreements.append(f"history has the freeze overrides {overrides or 'none'}; the run's status has "
                                       f"{said or 'none'}")
    return trail


def _verdicts(trail: AuditTrail, status: RunStatus) -> None:
    """Each decision's verdict (accepted, or refused and why) is the run's own: taken from its status, in order."""
    verdicts = [d for d in status.approval.decisions if d.kind != "timeout"]
    entries = [e for e in trail.entries if e.what == "decision"]
    for entry, d in zip(entries, verdicts):
        verdict = "accepted" if d.accepted else f"refused: {d.refused_because}"
        entry.text += f": {verdict}" + (f" — {d.text}" if d.text else "")
    for d in status.approval.decisions:
        if d.kind == "timeout":
            trail.entries.append(AuditEntry(at=d.at, what="decision", text=f"the gate timed out: {d.text}"))
    trail.entries.sort(key=lambda e: e.at)


_ENDED_AS = {"completed": (State.SUCCEEDED,), "failed": (State.FAILED, State.REJECTED), "cancelled": (State.CANCELLED,),
             "terminated": (State.TERMINATED,), "timed out": (State.FAILED, State.TERMINATED)}


def _disagreements(inp: CommitRunInput | None, decisions: list[tuple[str, str]], deployed: DeployResult | None,
                   rolled_back: DeployResult | None, ended: tuple[str, str] | None, status: RunStatus) -> list[str]:
    found = []
    if inp is None:
        return ["the history has no start event"]
    if (inp.started_by, inp.tenant.name) != (status.started_by, status.tenant):
        found.append(f"history: started by {inp.started_by} in {inp.tenant.name}; status: started by "
                     f"{status.started_by} in {status.tenant}")
    said = [(d.kind, d.by) for d in status.approval.decisions if d.kind != "timeout"]
    if decisions != said:
        found.append(f"history has the decisions {decisions or 'none'}; the run's status has {said or 'none'}")
    image = deployed.image if deployed else None
    if image != (status.deployed.image if status.deployed else None):
        found.append(f"history: deployed {image or 'nothing'}; status: deployed "
                     f"{status.deployed.image if status.deployed else 'nothing'}")
    back = rolled_back.image if rolled_back else None
    if back != (status.rolled_back.image if status.rolled_back else None):
        found.append(f"history: rolled back to {back or 'nothing'}; status: rolled back to "
                     f"{status.rolled_back.image if status.rolled_back else 'nothing'}")
    if ended is None:
        if status.status not in LIVE:
            found.append(f"history: the run is open; status: {status.status}")
    else:
        how, message = ended
        if status.status not in _ENDED_AS[how]:
            found.append(f"history: the run {how}; status: {status.status}")
        elif how == "failed" and message != status.error:
            found.append(f"history: failed with {message!r}; status: error {status.error!r}")
    return found
