"""``TenantFreezes``: a tenant's ad hoc freezes (``katkit freeze``/``unfreeze``), durable in Temporal.

One workflow per tenant (id ``freezes-<task queue>-<tenant>``), started on first use by update-with-start.
``freeze`` adds a freeze (who, why, until when), ``unfreeze`` lifts every one still in force and tells the runs
whose deploys wait for one (signal ``freeze_changed``: they look again), ``watch`` is what a waiting run's freeze
check asks (the freezes in force, and the run is told of the next unfreeze), the ``freezes`` query lists them.
Recurring windows are not here: they are in katkit.yaml, and the freeze check reads them from the run's config.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from katkit.models import FreezeEntry, FreezeState, UnfreezeInput
    from katkit.names import (QUERY_FREEZES, SIGNAL_FREEZE_CHANGED, TENANT_FREEZES, UPDATE_FREEZE, UPDATE_FREEZE_WATCH,
                              UPDATE_UNFREEZE)

LIFTED_KEEP = 20
IDLE_CLOSE_AFTER = timedelta(minutes=10)


@workflow.defn(name=TENANT_FREEZES)
class TenantFreezes:
    @workflow.init
    def __init__(self, state: FreezeState) -> None:
        self._state = state
        self._changed = False

    @workflow.run
    async def run(self, state: FreezeState) -> None:
        while True:
            self._drop_ended()
            self._show()
            self._changed = False
            ends = [f.until for f in self._state.freezes]
            timeout = (min(ends) - workflow.now()) if ends else IDLE_CLOSE_AFTER
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=max(timeout, timedelta(seconds=1)))
            except asyncio.TimeoutError:
                if not self._state.freezes and not self._state.waiters and workflow.all_handlers_finished():
                    return  # nothing frozen and no one waiting: the next freeze starts it again
            if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
                workflow.continue_as_new(self._state)

    def _drop_ended(self) -> None:
        now = workflow.now()
        self._state.freezes = [f for f in self._state.freezes if f.until > now]
        if not self._state.freezes:
            self._state.waiters = []  # their own timers wake them when a freeze ends by itself

    @workflow.update(name=UPDATE_FREEZE, description="Freeze the tenant's deploys until a time: FreezeEntry")
    def freeze(self, entry: FreezeEntry) -> FreezeState:
        entry.set_at = workflow.now()
        self._state.freezes.append(entry)
        self._changed = True
        return self._state

    @freeze.validator
    def _validate_freeze(self, entry: FreezeEntry) -> None:
        if entry.until <= workflow.now():
            raise ValueError(f"--until {entry.until.isoformat()} has passed; give a time in the future")
        if not entry.by:
            raise ValueError("a freeze names who sets it (--by)")

    @workflow.update(name=UPDATE_UNFREEZE, description="Lift every freeze now in force; waiting deploys look again")
    async def unfreeze(self, inp: UnfreezeInput) -> FreezeState:
        self._drop_ended()
        lifted = [f.model_copy(update={"by": inp.by, "until": workflow.now()}) for f in self._state.freezes]
        self._state.lifted = (self._state.lifted + lifted)[-LIFTED_KEEP:]
        self._state.freezes = []
        waiters, self._state.waiters = self._state.waiters, []
        self._changed = True
        for run_id in waiters:  # a run that has closed meanwhile cannot be told: nothing waits there any more
            try:
                await workflow.get_external_workflow_handle(run_id).signal(SIGNAL_FREEZE_CHANGED)
            except Exception as exc:  # noqa: BLE001 - a closed run: nothing to tell
                workflow.logger.info("run %s not told of the unfreeze: %s", run_id, exc)
        return self._state

    @workflow.update(name=UPDATE_FREEZE_WATCH, description="A run's freeze check: the freezes in force; it is told "
                                                           "of the next unfreeze")
    def watch(self, run_id: str) -> FreezeState:
        self._drop_ended()
        if self._state.freezes and run_id not in self._state.waiters:
            self._state.waiters.append(run_id)
            self._changed = True
        return self._state

    def _show(self) -> None:
        lines = [f"### Freezes of {self._state.tenant}", ""]
        for f in self._state.freezes:
            lines.append(f"- until {f.until:%Y-%m-%d %H:%M} UTC, set by {f.by}: {f.reason or '-'}")
        if not self._state.freezes:
            lines.append("No ad hoc freeze in force (recurring windows are in katkit.yaml).")
        if self._state.waiters:
            lines += ["", "Waiting: " + ", ".join(self._state.waiters)]
        workflow.set_current_details("\n".join(lines))

    @workflow.query(name=QUERY_FREEZES, description="The tenant's ad hoc freezes and who waits for them (JSON)")
    def freezes(self) -> FreezeState:
        return self._state
