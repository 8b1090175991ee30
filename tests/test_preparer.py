"""The host's preparer (pipelining, issue 16): builders handed over by an activity are made ready in the background,
each once; a start or a removal first settles its builder's prepare: one not begun is dropped, one under way is
waited for (heartbeating meanwhile). Driven with plain callables: what a prepare does is the builders' own test."""

from __future__ import annotations

import threading
import time

from katkit.preparer import Preparer


def test_a_builder_handed_over_twice_is_prepared_once() -> None:
    preparer, made, gate = Preparer(workers=2), [], threading.Event()
    preparer.submit("b1", lambda: (gate.wait(5), made.append("b1")))
    preparer.submit("b1", lambda: made.append("again"))
    gate.set()
    preparer.settle("b1")
    assert made == ["b1"] and preparer.pending() == 0


def test_settle_drops_a_prepare_not_begun_and_waits_for_one_under_way() -> None:
    preparer, made = Preparer(workers=1), []
    begun, release = threading.Event(), threading.Event()

    def slow() -> None:
        begun.set()
        release.wait(10)
        made.append("slow")

    preparer.submit("under-way", slow)
    preparer.submit("queued", lambda: made.append("queued"))
    assert begun.wait(5)
    preparer.settle("queued")  # not begun (the only worker is busy): dropped, its shard makes the builder itself
    beats: list[float] = []
    threading.Timer(1.5, release.set).start()
    t0 = time.monotonic()
    preparer.settle("under-way", progress=lambda: beats.append(time.monotonic()))
    assert made == ["slow"] and time.monotonic() - t0 >= 1.0 and beats  # waited for it, heartbeating
    time.sleep(0.2)
    assert made == ["slow"] and preparer.pending() == 0  # the dropped one never ran


def test_a_prepare_that_fails_is_no_failure_and_a_closed_preparer_takes_nothing() -> None:
    preparer, made = Preparer(workers=1), []

    def broken() -> None:
        raise RuntimeError("engine gone")

    preparer.submit("broken", broken)
    preparer.settle("broken")  # returns: the shard makes its builder as it always did
    preparer.close()
    preparer.submit("late", lambda: made.append("late"))
    preparer.settle("late")
    assert made == [] and preparer.pending() == 0


def test_settle_gives_up_waiting_after_its_timeout() -> None:
    preparer, release = Preparer(workers=1), threading.Event()
    preparer.submit("stuck", lambda: release.wait(10))
    time.sleep(0.1)
    t0 = time.monotonic()
    preparer.settle("stuck", timeout=1.0)
    assert 0.9 <= time.monotonic() - t0 < 5
    release.set()


def test_a_removal_that_gives_up_waiting_leaves_the_removal_to_the_prepare() -> None:
    preparer, release, removed = Preparer(workers=1), threading.Event(), threading.Event()
    preparer.submit("slow", lambda: release.wait(10), remove=removed.set)
    time.sleep(0.1)
    preparer.settle("slow", timeout=1.0, discard=True)  # remove_builder gave up: the builder is made after it
    assert not removed.is_set()
    release.set()
    assert removed.wait(5)  # the prepare removed what it made


async def test_watch_removes_unclaimed_builders_of_closed_runs_and_asks_open_ones_less_often(monkeypatch) -> None:
    """Builders made here that no shard claimed: those of a closed run are removed; a claimed one never is; an open
    run, or one that cannot be asked, keeps its builders and is asked less and less often."""
    import asyncio

    from katkit import preparer as module

    monkeypatch.setattr(module, "UNCLAIMED_S", 0.1)
    preparer, removed, asked = Preparer(workers=2), [], []
    runs = {"closed": False, "open": True}

    async def is_open(workflow_id: str, run_id: str) -> bool:
        asked.append(workflow_id)
        if workflow_id == "unknown":
            raise RuntimeError("server away")
        return runs[workflow_id]

    for name, run in (("c1", "closed"), ("c2", "closed"), ("claimed", "closed"), ("o1", "open"), ("u1", "unknown")):
        preparer.submit(name, lambda: None, remove=lambda n=name: removed.append(n), run=(run, "x"))
    preparer.submit("no-run", lambda: None, remove=lambda: removed.append("no-run"))  # no run: never watched
    for name in ("c1", "claimed", "o1"):
        while name not in preparer.unclaimed():
            await asyncio.sleep(0.01)
    preparer.settle("claimed")  # its shard started: its own activity removes it
    watch = asyncio.ensure_future(preparer.watch(is_open, every=0.05, most=0.4))
    try:
        await asyncio.sleep(1.5)
    finally:
        watch.cancel()
    assert sorted(removed) == ["c1", "c2"]
    assert preparer.unclaimed() == ["o1", "u1"]
    assert asked.count("closed") == 1  # one question for the run's two builders
    assert 2 <= asked.count("open") <= 5  # after 0.1 s, then every 0.4 s (12 times longer, at most 0.4): not 0.05
    preparer.close()
    assert preparer.unclaimed() == []


async def test_watch_asks_an_open_run_less_and_less_often_and_outlives_a_failing_server(monkeypatch) -> None:
    import asyncio

    from katkit import preparer as module

    monkeypatch.setattr(module, "UNCLAIMED_S", 0.05)
    monkeypatch.setattr(module, "ASK_S", 0.2)
    preparer, asked = Preparer(workers=1), []

    async def is_open(workflow_id: str, run_id: str) -> bool:
        asked.append(time.monotonic())
        if len(asked) == 2:
            await asyncio.sleep(5)  # a server that does not answer: given up after ASK_S, asked again later
        return True

    preparer.submit("b", lambda: None, run=("open", "x"))
    while not preparer.unclaimed():
        await asyncio.sleep(0.01)
    watch = asyncio.ensure_future(preparer.watch(is_open, every=0.02, most=3.0))
    try:
        await asyncio.sleep(4.5)
    finally:
        watch.cancel()
    gaps = [b - a for a, b in zip(asked, asked[1:])]
    assert len(asked) == 3 and 0.6 <= gaps[0] <= 1.2 and gaps[1] >= 2.9, gaps  # 0.05 s, then x12 (0.6 s), then 3 s
    assert preparer.unclaimed() == ["b"]


async def test_the_worker_runs_its_background_while_it_polls_and_cancels_it_when_it_stops() -> None:
    import asyncio

    from worker import KatkitWorker

    started, cancelled = asyncio.Event(), asyncio.Event()

    async def background() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with KatkitWorker(background=background):
        await asyncio.wait_for(started.wait(), 5)
        assert not cancelled.is_set()
    await asyncio.wait_for(cancelled.wait(), 5)
