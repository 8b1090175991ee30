"""An execution phase's shards: each a ``run_shard`` activity (its builder from start to removal) on the worker
host that owns the builder; all at once, fail fast; a shard whose host does not come back moves to a live one.
Owned by a CommitRun, which records the phase's own start and end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.hosts import HostActivities, ping_host, ping_queue
    from activities.shards import ShardActivities
    from katkit.builders import builder_name
    from katkit.config import TenantConfig
    from katkit.models import (
        CommitRunInput,
        Phase,
        PhaseState,
        PickHostInput,
        PrepareAhead,
        PrepareResult,
        RemoveBuilderInput,
        RunPlan,
        ShardInput,
        ShardResult,
        ShardState,
    )
    from katkit.states import State
    from workflows.options import (
        CLEANUP_TIMEOUT,
        INFRA_RETRY,
        PICK_HOST_TIMEOUT,
        PING_TIMEOUT,
        PREPARE_RETRY,
        PREPARE_TIMEOUT,
        SHARD_HEARTBEAT_TIMEOUT,
        SHARD_TIMEOUT_MARGIN,
        failure_text,
    )

ANOTHER_FAILED = "another shard failed"


class ShardRunner:
    """Runs the shards of each execution phase of one run. ``host`` is the worker host queue the run's builders use
    (None: the shared queue, as runs recorded before worker hosts and tenants whose builders any host reaches)."""

    def __init__(self, inp: CommitRunInput, run_id: str, *, by_host: bool, on_change: Callable[[], None]) -> None:
        self.tenant: TenantConfig = inp.tenant
        self.inp = inp
        self.run_id = run_id
        self.by_host = by_host
        self.on_change = on_change  # a shard started, ended or moved: the run's page shows it
        self.host: str | None = None
        self._cleanup_later: list[tuple[str, str]] = []  # (builder, its host's queue) whose activity gave up
        self._prepared: dict[str, list[tuple[asyncio.Future[PrepareResult] | None, str, str]]] = {}  # phase -> (prepare, builder, host)
        self.remove_unstarted = False  # a prepared phase's shards cancelled before they started: remove their builders

    # -- pipelining: the next phase's builders are made ready while this one runs ----------------------------
    def is_prepared(self, phase: str) -> bool:
        return phase in self._prepared

    def mark_prepared(self, phase: Phase) -> None:
        """``phase``'s builders are handed to the host's preparer by an activity (the checkout, or a shard of the
        phase before: ``PrepareAhead``), not by activities of their own: its shards settle them on the host."""
        self._prepared[phase.name] = [(None, builder_name(self.run_id, workflow.info().run_id, phase.name, i),
                                       self.host or "") for i in range(phase.parallelism)]

    def prepare(self, phase: Phase, plan: RunPlan, ahead: int = 1) -> None:
        """Start preparing ``phase``'s builders (``ahead`` phases after the one that runs now): started and checked
        out, waiting to be told to start ci.sh, and no secret; the phase's ``run`` tells them, ``discard_prepared``
        removes those no phase used. They wait up to the phase timeout of each phase before them."""
        link = self.inp.link
        assert link is not None, "a run with execution phases has a link (a rollback has none)"
        host = self.host or ""
        prepared: list[tuple[asyncio.Future[PrepareResult] | None, str, str]] = []
        for i in range(phase.parallelism):
            inp = ShardInput(run_id=self.run_id, attempt_key=workflow.info().run_id, tenant=self.tenant, link=link,
                             sha=plan.sha, phase=phase, shard_index=i, local_fleet=plan.local_fleet,
                             deadline=workflow.now() + self.tenant.phase_timeout * ahead, untrusted=self.inp.untrusted,
                             ref=self.inp.ref)
            task = asyncio.ensure_future(workflow.execute_activity_method(
                ShardActivities.prepare_builder, inp, start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=PREPARE_RETRY, task_queue=host or None, schedule_to_start_timeout=self._host_wait(host),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"prepare {phase.name} shard {i + 1}/{phase.parallelism}"))
            prepared.append((task, builder_name(self.run_id, workflow.info().run_id, phase.name, i), host))
        self._prepared[phase.name] = prepared

    @staticmethod
    async def _settle(prepared: list[tuple[asyncio.Future[PrepareResult] | None, str, str]], *, cancelling: bool = False) -> None:
        """Wait for prepares to end (a cancelled one waits until its activity has ended: a builder made after its
        removal would be left). ``cancelling``: the run is being cancelled or has failed, nothing here may stop it."""
        for task, name, _ in prepared:
            if task is None or (task.done() and (task.cancelled() or task.exception() is None)):
                continue
            try:
                await task
            except ActivityError as exc:  # not prepared: the shard's builder is made when it starts, as always
                workflow.logger.info("builder %s not prepared: %s", name, failure_text(exc))
            except BaseException:  # noqa: BLE001 - a cancel already delivered; the caller goes on removing
                if not cancelling:
                    raise

    async def discard_prepared(self) -> None:
        """Remove the builders prepared for a phase that will not run (the phase before failed, the run was
        cancelled): they are never left behind (a host that is gone leaves them to its reaper)."""
        prepared = [entry for entries in self._prepared.values() for entry in entries]
        self._prepared.clear()
        await self._settle(prepared, cancelling=True)
        outcomes = await asyncio.gather(*(self._remove(name, host) for _, name, host in prepared), return_exceptions=True)
        for (_, name, _), outcome in zip(prepared, outcomes):
            if isinstance(outcome, BaseException):
                workflow.logger.warning("prepared builder %s left to its host's reaper: %s", name, outcome)

    async def run(self, phase: Phase, state: PhaseState, plan: RunPlan, then: Callable[[], None] | None = None,
                  ahead: list[PrepareAhead] | None = None) -> str:
        """Run the phase's shards; return why the phase failed ('' when every shard succeeded). A cancel, or an
        error of the workflow's own, stops every sibling shard first and is raised. ``then`` is called once the
        shards' activities are scheduled; ``ahead``: the phases whose builders the first shard's host prepares."""
        prepared = self._prepared.get(phase.name, [])
        await self._settle(prepared)  # its builders were prepared while the phases before ran
        self._prepared.pop(phase.name, None)  # from now on its shards own them (each removes its builder)
        deadline = workflow.now() + self.tenant.phase_timeout
        link = self.inp.link
        assert link is not None, "a run with execution phases has a link (a rollback has none)"

        def start(i: int, note: str = "", prepare: list[PrepareAhead] | None = None) -> asyncio.Future[ShardResult]:
            shard = state.shards[i]
            shard.host = shard.host or self.host or ""
            return asyncio.ensure_future(workflow.execute_activity_method(
                ShardActivities.run_shard,
                ShardInput(run_id=self.run_id, attempt_key=workflow.info().run_id, tenant=self.tenant,
                           link=link, sha=plan.sha, phase=phase, shard_index=i, local_fleet=plan.local_fleet,
                           deadline=deadline, generation=shard.generation, log_note=note, untrusted=self.inp.untrusted,
                           ref=self.inp.ref, prepare=prepare or []),
                start_to_close_timeout=self.tenant.phase_timeout + SHARD_TIMEOUT_MARGIN,
                heartbeat_timeout=SHARD_HEARTBEAT_TIMEOUT, retry_policy=INFRA_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{phase.name} shard {i + 1}/{phase.parallelism}",
                task_queue=shard.host or None, schedule_to_start_timeout=self._host_wait(shard.host),
            ))

        tasks = {start(i, prepare=None if i else ahead): i for i in range(phase.parallelism)}
        if then is not None:
            then()
        for shard in state.shards:
            shard.state = State.RUNNING
        self.on_change()
        failure = ""
        pending = list(tasks)

        def in_shard_order(futures: Iterable[asyncio.Future[ShardResult]]) -> list[asyncio.Future[ShardResult]]:
            return sorted(futures, key=tasks.__getitem__)  # sets have no stable order; commands must have one

        try:
            while pending and not failure:
                done, rest = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending = in_shard_order(rest)
                for task in in_shard_order(done):
                    i = tasks[task]
                    if self._host_waited_for(task, state.shards[i]):  # busy or gone: ask, then wait or move
                        retry = start(i, await self._rehome(state.shards[i]))
                        tasks[retry] = i
                        pending = in_shard_order({*pending, retry})
                        continue
                    failure = failure or self._record(phase, state.shards[i], task)
                    self.on_change()
        except (asyncio.CancelledError, Exception):  # cancelled, or e.g. no host could be picked: stop the siblings
            await self._cancel(pending, state, "", self._unstarted(prepared, pending, tasks, state))
            raise
        if failure:
            await self._cancel(pending, state, ANOTHER_FAILED, self._unstarted(prepared, pending, tasks, state))
        return failure

    def _unstarted(self, prepared: list[tuple[asyncio.Future[PrepareResult] | None, str, str]],
                   pending: list[asyncio.Future[ShardResult]], tasks: dict[asyncio.Future[ShardResult], int],
                   state: PhaseState) -> list[tuple[str, str]]:
        """The prepared builders of the shards about to be cancelled. One whose activity never started has nobody
        else to remove it; the workflow cannot tell which did, so all of them (one removed already is no error)."""
        if not self.remove_unstarted or not prepared:
            return []
        hosts = {name: host for _, name, host in prepared}
        found = []
        for task in pending:
            shard = state.shards[tasks[task]]
            name = builder_name(self.run_id, workflow.info().run_id, state.name, shard.index, shard.generation)
            if name in hosts:
                found.append((name, hosts[name]))
        return found

    # -- worker hosts: a shard's attempts go to the host that owns its builder --------------------------------
    def _host_wait(self, host: str) -> timedelta | None:
        """How long a builder's activity waits for its host (``task_queue=host``) to take it; then the host is asked
        whether it is busy or gone. None on the shared queue: any host takes it."""
        return self.tenant.host_wait if host else None

    @staticmethod
    def _host_waited_for(task: asyncio.Future[ShardResult], shard: ShardState) -> bool:
        """The shard's attempt waited ``host_wait`` for its host without starting: that host is busy or gone."""
        if task.cancelled() or not shard.host:
            return False
        exc = task.exception()
        return isinstance(exc, ActivityError) and isinstance(exc.cause, ActivityTimeout) and \
            exc.cause.type == TimeoutType.SCHEDULE_TO_START

    async def _rehome(self, shard: ShardState) -> str:
        """A busy host keeps the shard (it re-attaches there); a gone one loses it to a live host, where it starts
        afresh. Return the line the shard's new log starts with ('' when it stays)."""
        gone, waited = shard.host, self.tenant.host_wait
        try:
            await workflow.execute_activity(
                ping_host, task_queue=ping_queue(gone), schedule_to_start_timeout=min(waited, PING_TIMEOUT),
                start_to_close_timeout=PING_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"is {gone} there?")
            return ""  # it answered: busy, not gone
        except ActivityError:
            pass
        if gone == self.host:  # the run's host is gone: a live one takes the rest of the run
            self.host = await workflow.execute_activity_method(
                HostActivities.pick_host, PickHostInput(reason=f"{gone} did not come back within {waited}"),
                start_to_close_timeout=PICK_HOST_TIMEOUT, retry_policy=INFRA_RETRY, summary="pick a worker host")
        shard.host, shard.generation = self.host or "", shard.generation + 1
        note = (f"host {gone} did not come back within {waited}: this shard started afresh on {shard.host} "
                f"(the builder left on {gone} is removed when that host returns)")
        workflow.logger.warning(note)
        return note

    def _record(self, phase: Phase, shard: ShardState, task: asyncio.Future[ShardResult]) -> str:
        """Record a finished shard; return why it failed, or '' when it succeeded."""
        label = f"shard {shard.index + 1}/{phase.parallelism}"
        exc = task.exception()
        if exc is not None:
            shard.state = State.FAILED
            self._cleanup_later.append((builder_name(self.run_id, workflow.info().run_id, phase.name, shard.index,
                                                     shard.generation), shard.host))
            return f"{label}: {failure_text(exc)}"
        result = task.result()
        shard.exit_code, shard.log_key, shard.reattached = result.exit_code, result.log_key, result.reattached
        shard.log_tail = result.log_tail
        if result.started_at and result.ended_at:
            shard.duration_s = round((result.ended_at - result.started_at).total_seconds(), 3)
        if result.exit_code == 0:
            shard.state = State.SUCCEEDED
            return ""
        shard.state = State.FAILED
        return f"{label}: {result.message or f'exited {result.exit_code}'}"

    async def _cancel(self, pending: list[asyncio.Future[ShardResult]], state: PhaseState, why: str,
                      unstarted: list[tuple[str, str]] | None = None) -> None:
        """Cancel the shards still running (each removes its builder), then remove the builders whose activity gave
        up, and ``unstarted`` (prepared builders of shards cancelled before their activity started): never leave
        one behind."""
        self._cleanup_later.extend(unstarted or [])
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except BaseException:  # noqa: BLE001 - each shard's own end is recorded below
                pass
        for shard in state.shards:
            if shard.state == State.RUNNING:
                shard.state, shard.message = State.CANCELLED, why
        if self.by_host:  # each on its own host, all at once; a host that is gone leaves it to its reaper
            removals = [self._remove(name, host) for name, host in self._cleanup_later]
            for (name, _), outcome in zip(self._cleanup_later, await asyncio.gather(*removals, return_exceptions=True)):
                if isinstance(outcome, BaseException):
                    workflow.logger.warning("builder %s left to its host's reaper: %s", name, outcome)
        else:
            for name, _ in self._cleanup_later:
                await self._remove(name, "")
        self._cleanup_later.clear()

    async def _remove(self, builder: str, host: str) -> None:
        await workflow.execute_activity_method(
            ShardActivities.remove_builder, RemoveBuilderInput(tenant=self.tenant, builder=builder),
            start_to_close_timeout=CLEANUP_TIMEOUT, retry_policy=INFRA_RETRY, task_queue=host or None,
            schedule_to_start_timeout=self._host_wait(host))
