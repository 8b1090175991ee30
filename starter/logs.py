"""The starter's calls on builder logs, read from the log store (there while a phase runs and after its builders are
gone): a run's shard logs by phase and 1-based shard number, followed as they grow, and a failed shard's last lines.

Shards are numbered for people from 1, as everywhere katkit talks to them (``shard 2/3``, the label ``TEST#2``,
``katkit logs --shard 2``); ``ShardState.index`` and ci.sh's ``KATKIT_SHARD_INDEX`` stay 0-based (shard N is
index N-1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple

from katkit.errors import BadInput, UnknownName
from katkit.models import PhaseState, PhaseType, RunStatus, ShardState
from katkit.names import log_key
from katkit.states import ENDED, State
from starter.status import StatusCalls

SHARD_ENDED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)
TAIL_BYTES = 64 * 1024
"""How much of a log's end ``failure_tail`` reads: enough for its lines, never the whole of a large log."""


@dataclass(frozen=True)
class ShardLog:
    label: str
    """``PHASE`` for a phase of one shard, else ``PHASE#N`` for shard N (1-based)."""
    key: str
    phase: PhaseState
    shard: ShardState


class LogEvent(NamedTuple):
    label: str
    data: bytes
    """The shard's next bytes; b'' in the one event that says the shard has ended."""
    ended: ShardState | None = None
    """Set once per shard, after its last bytes: how it ended (state, exit code, duration)."""


def shard_label(phase: PhaseState, shard: ShardState) -> str:
    return phase.name if phase.parallelism == 1 else f"{phase.name}#{shard.index + 1}"


def _shards_of(phases: list[PhaseState]) -> str:
    return "; ".join(f"{p.name} has shard 1" if p.parallelism == 1 else f"{p.name} has shards 1-{p.parallelism}"
                     for p in phases) or "no phase of it runs ci.sh"


class LogCalls(StatusCalls):
    async def shard_logs(self, run_id: str, phase: str | None = None, shard: int | None = None,
                         wait: bool = False, attempt: int | None = None) -> tuple[RunStatus, list[ShardLog]]:
        """The run's status and the log of each started shard of each execution phase (or of ``phase``; only shard
        number ``shard``, 1-based). With ``wait``, names and numbers are not checked before the checkout has listed
        the phases (a follower may come before them)."""
        if shard is not None and shard < 1:
            raise BadInput(f"shard {shard}: shards are numbered from 1")
        handle = await self._handle(run_id) if attempt is None else await self.attempt_handle(run_id, attempt)
        execution = (await handle.describe()).run_id or ""
        st = await self.status(run_id, attempt)  # a retry's reused phases name their own attempt's log keys
        checkable = bool(st.phases) or st.status in ENDED or not wait
        names = [p.name for p in st.phases]
        if phase is not None and phase not in names and checkable:
            raise UnknownName(f"run {run_id} has no phase {phase!r} (phases: {', '.join(names) or 'none yet'})")
        execution_phases = [p for p in st.phases if p.type == PhaseType.EXECUTION and phase in (None, p.name)]
        if shard is not None and checkable and not any(shard <= p.parallelism for p in execution_phases):
            raise UnknownName(f"run {run_id} has no shard {shard} ({_shards_of(execution_phases)})")
        logs = []
        for p in execution_phases:
            if p.state in (State.PENDING, State.SKIPPED):
                continue
            for s in p.shards:
                if shard is None or s.index == shard - 1:
                    key = s.log_key or log_key(run_id, execution, p.name, s.index, s.generation)
                    logs.append(ShardLog(shard_label(p, s), key, p, s))
        return st, logs

    async def log_keys(self, run_id: str, phase: str | None = None, wait: bool = False,
                       shard: int | None = None) -> tuple[RunStatus, list[tuple[str, str]]]:
        """The run's status and ``(label, log key)`` of each shard (see ``shard_logs``)."""
        st, logs = await self.shard_logs(run_id, phase, shard, wait)
        return st, [(log.label, log.key) for log in logs]

    async def log_events(self, run_id: str, phase: str | None = None, shard: int | None = None, follow: bool = False,
                         interval: float = 0.3, attempt: int | None = None) -> AsyncIterator[LogEvent]:
        """The shards' bytes from the log store as they come, and one event per shard once it has ended (after its
        last bytes: a shard the run's status shows ended has written its whole log). With ``follow``, until the run
        (or ``phase``) has ended."""
        offsets: dict[str, int] = {}
        told: set[str] = set()
        while True:
            st, logs = await self.shard_logs(run_id, phase, shard, wait=follow, attempt=attempt)
            settled = st.status in ENDED or (
                phase is not None and any(p.name == phase and p.ended_at is not None for p in st.phases))
            for log in logs:
                data = self.log_store.read(log.key, offsets.get(log.key, 0))
                if data:
                    offsets[log.key] = offsets.get(log.key, 0) + len(data)
                    yield LogEvent(log.label, data)
                if log.shard.state in SHARD_ENDED and log.key not in told:
                    told.add(log.key)
                    yield LogEvent(log.label, b"", log.shard)
            if not follow or settled:
                return
            await asyncio.sleep(interval)

    async def follow_logs(self, run_id: str, phase: str | None = None, follow: bool = False,
                          interval: float = 0.3, shard: int | None = None) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(label, bytes)`` from the log store; with ``follow``, until the run (or ``phase``) has ended."""
        async for event in self.log_events(run_id, phase, shard, follow, interval):
            if event.data:
                yield event.label, event.data

    async def failure_tail(self, run_id: str, lines: int = 20) -> list[tuple[str, list[str]]]:
        """``(label, last lines)`` of each failed shard of the run (those with a log), in phase and shard order."""
        _, logs = await self.shard_logs(run_id)
        tails = []
        for log in logs:
            if log.shard.state != State.FAILED:
                continue
            size = self.log_store.size(log.key)
            text = self.log_store.read(log.key, max(0, size - TAIL_BYTES)).decode(errors="replace").splitlines()
            if size > TAIL_BYTES:
                text = text[1:]  # the first line read is most likely cut
            if text:
                tails.append((log.label, text[-lines:]))
        return tails
