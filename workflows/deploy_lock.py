"""``DeployLock``: one deployment at a time per tenant service, and the service's ledger (what ran when).

One workflow per tenant service (id ``lock-<task queue>-<tenant>-<service>``), started on first use by the deploy
activity through update-with-start. ``acquire`` is an update that returns when the caller holds the lock
(waiters are served in arrival order) or was superseded; ``release`` frees it. Retries are re-entrant:
the same run asking again gets the lock it holds. A watchdog frees the lock of a run that closed
without releasing it (terminated), so no waiter is lost and nothing deadlocks.

The ledger: ``record`` appends a deployment (once per run execution and kind), ``import_history`` merges the
JSON history older versions kept on a worker host's disk (each worker offers its own at start; taken once).
Any client or worker reads it with the ``state`` query, so rollback, a deploy's previous image and ``katkit
history`` agree on every host. A workflow with a ledger never closes; it continues as new carrying the lock
queue and the last ``LEDGER_KEEP`` records.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.deploy import DeployActivities
    from katkit.models import ClosedRunsInput, LedgerRecord, LockEntry, LockGrant, LockRequest, LockState
    from katkit.names import DEPLOY_LOCK, LEDGER_IMPORT, LEDGER_RECORD, LOCK_ACQUIRE, LOCK_RELEASE, LOCK_STATE
    from katkit.platforms import DeploymentRecord
    from workflows.details import lock_details

IDLE_CLOSE_AFTER = timedelta(minutes=10)
# The server admits 10 updates in flight per workflow by default (history.maxInFlightUpdates): at most this many
# acquires wait inside the lock, which leaves room for the holder's release and record; the others keep their place
# in the queue and ask again (LockGrant.queued).
WAITING_INSIDE = 5
WAITERS_PATCH = "katkit-lock-waiters-1"
UPGRADE_PATCH = "katkit-lock-upgrade-1"  # a lock from before WAITERS_PATCH takes the cap from its first caller
# that can queue (asked only then: recorded histories never had one, and a lock replayed here asks at the same point)
WATCHDOG_PATCH = "katkit-lock-watchdog-1"  # a watchdog round that cannot ask is skipped, never the lock's end
CONTINUE_AS_NEW_AFTER_GRANTS = 500
LEDGER_KEEP = 100


@workflow.defn(name=DEPLOY_LOCK)
class DeployLock:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        self._state = state
        self._capped = workflow.patched(WAITERS_PATCH)  # once per run: executions from before wait all inside
        self._inside: set[str] = set()  # the runs whose acquire waits in the workflow now

    @workflow.run
    async def run(self, state: LockState) -> None:
        while True:
            self._show()
            busy = self._state.holder is not None or bool(self._state.waiters)
            keeps_ledger = self._keeps_ledger()
            try:
                await workflow.wait_condition(
                    lambda: self._changed(busy) or self._keeps_ledger() != keeps_ledger,
                    timeout=timedelta(seconds=self._state.watchdog_s) if busy else None if keeps_ledger else IDLE_CLOSE_AFTER)
            except TimeoutError:
                if busy:
                    await self._free_closed_runs()
                elif workflow.all_handlers_finished() and not self._keeps_ledger():
                    return  # idle, and nothing to remember: the next deploy starts the lock again
            long_history = self._keeps_ledger() and workflow.info().is_continue_as_new_suggested()
            if (self._state.grants >= CONTINUE_AS_NEW_AFTER_GRANTS or long_history) and workflow.all_handlers_finished():
                self._state.grants = 0
                workflow.continue_as_new(self._state)

    def _keeps_ledger(self) -> bool:
        """A service with a ledger is remembered for good (older histories never had one: they close when idle)."""
        return bool(self._state.records) or self._state.imported

    def _changed(self, busy: bool) -> bool:
        return busy != (self._state.holder is not None or bool(self._state.waiters))

    async def _free_closed_runs(self) -> None:
        entries = ([self._state.holder] if self._state.holder else []) + list(self._state.waiters)
        try:
            closed = await workflow.execute_activity_method(
                DeployActivities.closed_runs, ClosedRunsInput(executions=[(e.run_id, e.execution) for e in entries]),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as exc:
            if not workflow.patched(WATCHDOG_PATCH):
                raise
            # the lock and its ledger live on: asked again at the next watchdog round
            workflow.logger.warning("could not ask which deploy lock holders closed: %s", exc.cause or exc)
            return
        for run_id in closed:
            workflow.logger.warning("freeing the deploy lock of closed run %s", run_id)
            self._release(run_id)

    @workflow.update(name=LOCK_ACQUIRE)
    async def acquire(self, req: LockRequest) -> LockGrant:
        st = self._state
        if not self._capped and req.can_queue and workflow.patched(UPGRADE_PATCH):
            self._capped = True
        st.policy = req.policy
        if st.holder is not None and st.holder.run_id == req.run_id:
            return self._grant(0.0)  # a retried deploy of the holder
        asked = workflow.now()
        if self._capped and req.run_id in st.superseded:  # superseded while it waited outside
            return LockGrant(granted=False, superseded_by=st.superseded.pop(req.run_id))
        if req.run_id in st.withdrawn:
            st.withdrawn.remove(req.run_id)
        if all(w.run_id != req.run_id for w in st.waiters):
            if req.policy == "supersede":  # a newer run for the service replaces the older ones still waiting
                for older in st.waiters:
                    st.superseded[older.run_id] = req.run_id
                st.waiters = []
            st.waiters.append(LockEntry(run_id=req.run_id, execution=req.execution, since=asked))
            self._show()
        elif self._capped:  # asking again: it has waited since it first asked
            asked = next(w.since for w in st.waiters if w.run_id == req.run_id)
        if self._waits_outside(req):
            place = next(i for i, w in enumerate(st.waiters) if w.run_id == req.run_id)
            return LockGrant(granted=False, queued=True, position=place,
                             waited_s=(workflow.now() - asked).total_seconds())
        self._inside.add(req.run_id)
        try:
            await workflow.wait_condition(lambda: self._my_turn(req.run_id))
        finally:
            self._inside.discard(req.run_id)
        waited = (workflow.now() - asked).total_seconds()
        if req.run_id in st.superseded:
            return LockGrant(granted=False, superseded_by=st.superseded.pop(req.run_id), waited_s=waited)
        if req.run_id in st.withdrawn:
            st.withdrawn.remove(req.run_id)
            return LockGrant(granted=False, waited_s=waited)
        if st.holder is None:
            entry = st.waiters.pop(0)
            st.holder = LockEntry(run_id=entry.run_id, execution=entry.execution, since=workflow.now())
            st.grants += 1
        return self._grant(waited)

    def _waits_outside(self, req: LockRequest) -> bool:
        """Too many wait inside already, and it is not its turn: it keeps its place and asks again (only a caller
        that can: a deploy activity from before this change takes "not granted" as withdrawn)."""
        return self._capped and req.can_queue and len(self._inside) >= WAITING_INSIDE and not self._my_turn(req.run_id)

    @acquire.validator
    def _asks_again_too_soon(self, req: LockRequest) -> None:
        """A queued caller asking again before a place inside is free is turned away here, before the update is
        taken: a turned-away update leaves nothing in the history (each ask taken would add four events)."""
        if any(w.run_id == req.run_id for w in self._state.waiters) and self._waits_outside(req):
            raise ValueError("still queued: ask again soon")

    def _grant(self, waited: float) -> LockGrant:
        st = self._state
        self._show()
        return LockGrant(granted=True, waited_s=waited, last=st.records[-1] if st.records else None, imported=st.imported)

    def _my_turn(self, run_id: str) -> bool:
        st = self._state
        if run_id in st.superseded or run_id in st.withdrawn:
            return True
        if st.holder is not None:
            return st.holder.run_id == run_id
        return bool(st.waiters) and st.waiters[0].run_id == run_id

    @workflow.update(name=LOCK_RELEASE)
    def release(self, req: LockRequest) -> None:
        self._release(req.run_id)

    def _release(self, run_id: str) -> None:
        st = self._state
        if st.holder is not None and st.holder.run_id == run_id:
            st.holder = None
        elif any(w.run_id == run_id for w in st.waiters):
            st.waiters = [w for w in st.waiters if w.run_id != run_id]
            if not self._capped or run_id in self._inside:  # none waits for it outside: nothing to wake
                st.withdrawn.append(run_id)  # wakes its waiting acquire, which then returns not granted
        self._show()

    @workflow.update(name=LEDGER_RECORD)
    def record(self, inp: LedgerRecord) -> None:
        """Add a deployment to the ledger (a retried deploy of the same run execution records once)."""
        self._import(inp.legacy)
        rec, records = inp.record, self._state.records
        if any((r.run_id, r.execution, r.kind, r.image) == (rec.run_id, rec.execution, rec.kind, rec.image)
               for r in records[-10:]):
            return
        records.append(rec)
        del records[:-LEDGER_KEEP]
        self._show()

    @workflow.update(name=LEDGER_IMPORT)
    def import_history(self, legacy: list[DeploymentRecord]) -> LockState:
        """Take the JSON history an older katkit kept on a worker's disk, once; return the ledger."""
        self._import(legacy)
        return self._state

    def _import(self, legacy: list[DeploymentRecord]) -> None:
        """Merge a host's old JSON history (each host's worker offers its own at start; a record is taken once)."""
        st = self._state
        st.imported = st.imported or bool(legacy)
        ours = {(r.run_id, r.image, r.at) for r in st.records}
        new = [r for r in legacy if (r.run_id, r.image, r.at) not in ours]
        if new:
            st.records = sorted(new + st.records, key=lambda r: r.at)[-LEDGER_KEEP:]
        self._show()

    def _show(self) -> None:
        """The lock's page: who holds it, who waits, the last deployments (current details: no history event)."""
        workflow.set_current_details(lock_details(self._state, workflow.info().namespace))

    @workflow.query(name=LOCK_STATE)
    def state(self) -> LockState:
        return self._state
