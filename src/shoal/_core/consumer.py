"""The consumer loop: the one place that waits for results and enforces timeouts.

It is written once (``_steps`` says what to do next) and carried out twice:
blocking (``segments``, for map/run/imap) and awaiting (``asegments``, for
the async calls and the asyncio backend). Each turn it hands what finished to
the sinks, delivers what is deliverable, raises the run's error if it has
one, expires tasks past their deadline, ends the auto probe when it has
measured enough, runs one task itself when the backend is inline, and
otherwise sleeps until woken (a result, a closer deadline, the end of the
run) or until the earliest deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator

from shoal._backends import Backend, InlineBackend
from shoal._core.results import Segment
from shoal._core.run import Run


@dataclasses.dataclass(slots=True)
class _Deliver:
    segments: list[Segment]


@dataclasses.dataclass(slots=True)
class _RunInline:
    backend: InlineBackend
    timeout: float | None  # the longest it may then wait (a deadline)


@dataclasses.dataclass(slots=True)
class _Wait:
    timeout: float | None  # None: until woken


@dataclasses.dataclass(slots=True)
class _Switch:
    stop: Backend | None  # the probe's backend, to shut down before the chosen one starts


_Step = _Deliver | _RunInline | _Wait | _Switch


def _steps(run: Run, clear: Callable[[], None]) -> Iterator[_Step]:
    """What to do next, for both consumers.

    ``clear`` resets the wake-up signal before each look at the engine, so a
    result settled after the look still wakes the next wait.
    """
    engine = run.engine
    while True:
        clear()
        segs = run.taken = engine.take()  # the run's until delivered (Ctrl-C may come)
        # After the take: every item about to be delivered is recorded first
        # (a caller may hold the results it got for as long as it likes).
        run.record_settled()
        if segs:
            yield _Deliver(segs)
            run.taken = []
            engine.free(sum(s.count for s in segs))  # the caller has them now
            continue
        run.check()
        if engine.finished():
            if run.probe is not None:
                run.end_probe()
            run.check_source()
            return
        if run.probe is not None and run.probe.ready(engine):
            yield _Switch(run.choose())
            continue
        deadline = engine.next_deadline()
        if deadline is not None and deadline <= engine.clock():
            for task in engine.expire():
                run.abandon(task)
            continue
        timeout = None if deadline is None else deadline - engine.clock()
        if run.probe is not None and run.probe.due() > 0:  # then it ends when the item does
            timeout = _shortest(timeout, run.probe.due())
        backend = run.backend
        if isinstance(backend, InlineBackend):
            yield _RunInline(backend, timeout)
        else:
            yield _Wait(timeout)


def _shortest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def segments(run: Run) -> Generator[list[Segment], None, None]:
    """Settled segments as they become deliverable; blocks in between."""
    engine = run.engine
    wake = threading.Event()
    clean = False
    try:
        run.begin(wake.set)
        for step in _steps(run, wake.clear):
            if isinstance(step, _Deliver):
                yield step.segments
            elif isinstance(step, _RunInline):
                asked = step.backend.step(engine)
                if asked is not None:
                    wake.wait(_shortest(step.timeout, _finite(asked.seconds)))
            elif isinstance(step, _Switch):
                if step.stop is not None:
                    step.stop.shutdown(False)
                    run.switch()
            else:
                wake.wait(step.timeout)
        clean = True
    finally:
        if not clean:
            engine.stop()
        for backend in run.running:  # even one whose start Ctrl-C cut short
            backend.shutdown(not clean)
        engine.close_source()


async def asegments(run: Run) -> AsyncGenerator[list[Segment], None]:
    """``segments`` for a coroutine consumer; never blocks the loop."""
    import asyncio

    engine = run.engine
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    wake = asyncio.Event()
    pending = False

    def set_from_loop() -> None:
        nonlocal pending
        pending = False
        wake.set()

    def wake_up() -> None:
        nonlocal pending
        if threading.get_ident() == loop_thread:
            wake.set()
        elif not pending:  # coalesce wake-ups from worker threads
            pending = True
            loop.call_soon_threadsafe(set_from_loop)

    async def wait(timeout: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

    clean = False
    try:
        run.begin(wake_up)
        for step in _steps(run, wake.clear):
            if isinstance(step, _Deliver):
                yield step.segments
            elif isinstance(step, _RunInline):
                asked = await step.backend.astep(engine)
                if asked is not None:
                    await wait(_shortest(step.timeout, _finite(asked.seconds)))
            elif isinstance(step, _Switch):
                if step.stop is not None:
                    await step.stop.ashutdown(False)
                    run.switch()
            else:
                await wait(step.timeout)
        clean = True
    finally:
        if not clean:
            engine.stop()
        for backend in run.running:  # even one whose start a cancellation cut short
            await backend.ashutdown(not clean)
        engine.close_source()


def _finite(seconds: float) -> float | None:
    return None if seconds == float("inf") else seconds
