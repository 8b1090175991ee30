"""Builders made ready in the background, on the worker host that will run them (pipelining).

An activity that knows which phases come next (the checkout, once it has read the plan; a shard, once its ci.sh has
started) hands their builders to the host's ``Preparer`` and goes on: no activity, no workflow task and no history
event per prepared builder. Whoever needs a builder next settles its prepare first (``settle``): a prepare still
queued is dropped (the builder is then made as it always was), one under way is waited for. A host that dies with
prepares in hand leaves waiting builders: each waits at most its ``ready_for_s`` and the host's reaper removes it.

A builder the checkout handed over that no shard has claimed (settled) yet is looked after by ``watch``: a run
cancelled while its checkout still ran (the checkout runs on and hands its builders over all the same, where the run
can no longer know of them) has them removed within seconds, not at the reaper's next pass.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import structlog

log = structlog.get_logger("katkit.preparer")

SETTLE_S = 120.0  # at most this long a start waits for its builder's prepare (a docker create on a stalled engine)
UNCLAIMED_S = 5.0  # a builder made here that no shard has claimed this long: is its run still open? (then less often)
WATCH_S = 2.0  # how often ``watch`` looks for such builders
ASK_S = 10.0  # at most this long ``watch`` waits for the server's answer about one run


@dataclass
class _Watched:
    """A run with builders made here that no shard has claimed yet: their removals, and when to ask about it again."""

    builders: dict[str, Callable[[], None]]
    due: float
    every: float


class Preparer:
    def __init__(self, workers: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2),
                                        thread_name_prefix="katkit-prepare")
        self._lock = threading.Lock()
        self._pending: dict[str, Future[None]] = {}
        self._discarded: set[str] = set()  # removed while their prepare still ran: removed again once it ends
        self._watched: dict[tuple[str, str], _Watched] = {}  # runs with builders made here, unclaimed (``watch``)
        self._run_of: dict[str, tuple[str, str]] = {}  # such a builder -> its run
        self._closed = False

    def submit(self, name: str, prepare: Callable[[], None], remove: Callable[[], None] = lambda: None,
               run: tuple[str, str] | None = None) -> None:
        """Prepare builder ``name`` soon (once: a builder handed over twice is prepared once); ``remove`` removes it
        (a removal that gave up waiting for this prepare leaves that to it); ``run``: its run's workflow id and run
        id, asked about by ``watch`` while no shard has claimed the builder."""
        with self._lock:
            if self._closed or name in self._pending:
                return
            future = self._pool.submit(self._run, name, prepare, remove, run)
            self._pending[name] = future
        future.add_done_callback(lambda f: self._forget(name, f))

    def _run(self, name: str, prepare: Callable[[], None], remove: Callable[[], None],
             run: tuple[str, str] | None = None) -> None:
        try:
            prepare()
        except Exception as exc:  # noqa: BLE001 - a builder not prepared is made when its shard starts, as always
            log.info("builder not prepared", builder=name, error=(str(exc).splitlines() or [type(exc).__name__])[0][:200])
        with self._lock:
            discarded = name in self._discarded
            self._discarded.discard(name)
            if run is not None and not discarded:  # claimed by ``settle``, which waits for this to end
                watched = self._watched.setdefault(run, _Watched({}, time.monotonic() + UNCLAIMED_S, UNCLAIMED_S))
                watched.builders[name] = remove
                self._run_of[name] = run
        if discarded:
            try:
                remove()
            except Exception as exc:  # noqa: BLE001 - the reaper removes what is left
                log.warning("prepared builder not removed", builder=name, error=str(exc)[:200])

    def _forget(self, name: str, future: Future[None]) -> None:
        with self._lock:
            if self._pending.get(name) is future:
                del self._pending[name]

    def settle(self, name: str, progress: Callable[[], None] = lambda: None, timeout: float = SETTLE_S,
               discard: bool = False) -> None:
        """Before builder ``name`` is started or removed: drop its prepare if it has not begun, else wait for it to
        end (``progress`` about once a second: a waiting activity heartbeats). ``discard``: it is being removed;
        should the wait run out, the prepare removes what it made once it ends."""
        try:
            self._settle(name, progress, timeout, discard)
        finally:
            with self._lock:  # claimed: its shard or its removal looks after it now
                run = self._run_of.pop(name, None)
                watched = self._watched.get(run) if run is not None else None
                if run is not None and watched is not None:
                    watched.builders.pop(name, None)
                    if not watched.builders:
                        del self._watched[run]

    def _settle(self, name: str, progress: Callable[[], None], timeout: float, discard: bool) -> None:
        with self._lock:
            future = self._pending.get(name)
        if future is None or future.cancel():
            return
        waited = 0.0
        while waited < timeout:
            try:
                future.result(timeout=1.0)
                return
            except FutureTimeout:
                waited += 1.0
                progress()
            except Exception:  # noqa: BLE001 - _run reports its own failures; a cancel ends the wait too
                return
        if discard:
            with self._lock:
                if self._pending.get(name) is future:
                    self._discarded.add(name)
        log.warning("builder still being prepared; going on", builder=name, waited_s=waited)

    async def watch(self, is_open: Callable[[str, str], Awaitable[bool]], every: float = WATCH_S,
                    most: float = 300.0) -> None:
        """Remove the builders the checkout handed over (``submit`` with ``run``) that no shard claimed once their run
        has closed: a run is asked ``UNCLAIMED_S`` after its first such builder was made (a run cancelled before its
        checkout ended is closed by then), then a minute later, then every ``most`` seconds (a builder of a later phase
        waits as long as the phases before it run). A run that cannot be asked keeps them."""
        while True:
            await asyncio.sleep(every)
            try:
                await self._ask(is_open, most)
            except Exception as exc:  # noqa: BLE001 - never end the watch: the next round asks again
                log.warning("watch of prepared builders failed; asking again later", error=str(exc)[:200])

    async def _ask(self, is_open: Callable[[str, str], Awaitable[bool]], most: float) -> None:
        now = time.monotonic()
        with self._lock:
            due = [run for run, watched in self._watched.items() if watched.due <= now]
        for run in due:
            try:
                still_open = await asyncio.wait_for(is_open(*run), ASK_S)
            except Exception as exc:  # noqa: BLE001 - the server away or slow: asked again later
                log.info("could not ask whether a run is open", run_id=run[0], error=str(exc)[:200] or type(exc).__name__)
                still_open = True
            with self._lock:
                watched = self._watched.get(run)
                if watched is None:
                    continue  # all claimed meanwhile
                if still_open:
                    watched.every = min(watched.every * 12, most)
                    watched.due = time.monotonic() + watched.every
                    continue
                del self._watched[run]
                for name in watched.builders:
                    self._run_of.pop(name, None)
            for name, remove in watched.builders.items():
                log.info("removing a prepared builder whose run has closed", builder=name, run_id=run[0])
                try:
                    await asyncio.to_thread(remove)
                except Exception as exc:  # noqa: BLE001 - the reaper removes what is left
                    log.warning("prepared builder not removed", builder=name, error=str(exc)[:200])

    def unclaimed(self) -> list[str]:
        with self._lock:
            return sorted(self._run_of)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """The worker stops: queued prepares are dropped, those under way end on their own."""
        with self._lock:
            self._closed = True
            self._watched.clear()  # the reaper's now
            self._run_of.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
