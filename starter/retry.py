"""``katkit retry RUN [--from PHASE]``: a new attempt of an ended run that reuses the phases that succeeded.

Attempts are the executions of the run's workflow id, numbered from 1 in the order they started; ``status`` and
``logs`` take ``--attempt N``. A retry keeps the run's tenant, repository, sha and config snapshot (the earlier
attempt's input) unless ``--fresh-config``; it runs from the failed phase (or ``PHASE``, which may not come after it)
and takes every succeeded execution phase before that as it was (``reused from attempt N``, logs included). A
deployment phase is never reused: it runs again, through the gate.
"""

from __future__ import annotations

import getpass
from typing import Any

from temporalio.client import WorkflowHandle

from katkit.errors import BadInput
from katkit.models import CommitRunInput, PhaseType, RetrySpec, RunStatus
from katkit.names import COMMIT_RUN
from katkit.states import State
from katkit.temporal import DATA_CONVERTER
from starter.base import RunHandle
from starter.status import OPEN, StatusCalls


class RetryCalls(StatusCalls):
    async def retry(self, run_id: str, from_phase: str | None = None, fresh_config: bool = False,
                    by: str | None = None) -> RunHandle:
        """Start the next attempt of an ended run, reusing the execution phases that succeeded before the failed one
        (or ``from_phase``); checked before anything starts (bad input: ``BadInput``, nothing started)."""
        return await self.start_prepared(await self.prepare_retry(run_id, from_phase, fresh_config, by), run_id=run_id)

    async def prepare_retry(self, run_id: str, from_phase: str | None = None, fresh_config: bool = False,
                            by: str | None = None) -> CommitRunInput:
        """The input of the next attempt (``retry`` starts it): checked, nothing started."""
        handle = await self._handle(run_id)
        desc = await handle.describe()
        if desc.workflow_type != COMMIT_RUN:
            raise BadInput(f"{run_id} is a {desc.workflow_type}, not a run; retry one of its runs")
        prev = await self.status(run_id)
        if desc.status == OPEN:
            raise BadInput(f"run {run_id} is still open ({prev.status}); retry it once it has ended "
                           f"(or cancel it: katkit cancel {run_id})")
        names = [p.name for p in prev.phases]
        failed = next((i for i, p in enumerate(prev.phases) if p.state != State.SUCCEEDED), None)
        if from_phase is not None:
            if from_phase not in names:
                raise BadInput(f"run {run_id} has no phase {from_phase!r} (phases: {', '.join(names) or 'none'})")
            start = names.index(from_phase)
            if failed is not None and start > failed:
                raise BadInput(f"--from {from_phase} comes after the phase that did not succeed ({names[failed]}: "
                               f"{prev.phases[failed].state}); retry from {names[failed]} or an earlier phase")
        elif failed is None:
            if not prev.phases:
                start = 0
            else:
                raise BadInput(f"run {run_id} {prev.status}; nothing failed to retry (--from PHASE runs it again "
                               "from that phase)")
        else:
            start = failed
        earlier = await self._input_of(handle)
        executions = await self.executions(run_id)
        attempt = max(len(executions), prev.attempt) + 1
        reuse = [p for p in prev.phases[:start] if p.type == PhaseType.EXECUTION and p.state == State.SUCCEEDED]
        inp = earlier
        if fresh_config:
            tenant = self.config.tenant(earlier.tenant.name)
            link = self.config.link(earlier.repo, tenant.name) if earlier.link is not None else None
            inp = earlier.model_copy(update={"tenant": tenant, "link": link})
        inp = inp.model_copy(update={
            "attempt": attempt, "started_by": by or getpass.getuser(),
            "retry": RetrySpec(from_attempt=prev.attempt, from_phase=names[start] if names else "", reuse=reuse)})
        return inp

    async def _input_of(self, handle: WorkflowHandle[Any, RunStatus]) -> CommitRunInput:
        """The input (config snapshot) the run's latest attempt started with, from its history's first event."""
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            values = DATA_CONVERTER.payload_converter.from_payloads(list(payloads), [CommitRunInput])
            found: CommitRunInput = values[0]
            return found
        raise BadInput(f"run {handle.id} has no history to retry from")
