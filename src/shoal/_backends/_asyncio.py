"""The asyncio backend: a fixed set of worker coroutines on the consumer's loop.

Why workers and not one ``asyncio.Task`` per item: creating a task, a done
callback and a wake-up per item costs more than the work of a short coroutine;
with 100,000 items at concurrency 10,000 a task-per-item loop reaches ~40% of
the ideal time on a 2-core machine, a worker pool ~85%.

Why a shared *lot* and not a task per worker: the engine hands out a lot of
up to ``LOT_MAX`` consecutive items, and every free worker takes the next item
of the current lot, one at a time, so a slow item delays nobody else's. An
item then costs the backend no object the garbage collector must track (its
value and seconds go into slots of the lot), and finished items are reported
to the engine once per turn of the event loop, as runs of consecutive indices
(``Engine.complete(..., at=k)``). At 10,000 concurrent items that is what
keeps shoal at the speed of a hand-written pool: per-item objects that live
as long as the item (a task, a list, a coroutine) made the collector run twice
as often and take ten times as long.

Everything here runs on the loop's thread (completions and the consumer too),
so nothing needs a lock. With a timeout, lots have one item and each item
runs in an ``asyncio.Task`` of its own, so that a timed-out item is cancelled
for real (``CancelledError`` inside the user's coroutine) and its worker goes
on with the next item at once, without waiting for the cancellation to be
honoured: a coroutine that swallows it is abandoned, as the thread backend
abandons a thread (``_own_task``). With a rate limit, lots have one item too:
the token bucket then acts per item.

Workers start as lots bring items for them, up to ``workers``; an item's
exception, ``SystemExit`` included, is that item's failure (only Ctrl-C and
cancellation end the run).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend, Traits
from shoal._core.bridge import CANCEL_GRACE
from shoal._core.calling import Outcome
from shoal._core.engine import WAIT_FOR_SIGNAL, Wait, Work

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task

#: largest lot: items pulled from the input at once (no more than ``workers``)
LOT_MAX = 1024
#: the label of every item's ``worker``: all coroutines share one loop
WORKER = "asyncio"
_COROUTINE = types.CoroutineType


class _Lot:
    """A task being run by the workers: who takes the next item, and what finished."""

    __slots__ = ("errors", "finished", "items", "next", "seconds", "size", "task", "values")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.items = task.items
        self.size = len(task.items)
        self.next = 0  # index (in the lot) of the next item to start
        self.values: list[Any] = [None] * self.size
        self.seconds = [0.0] * self.size
        self.errors: dict[int, BaseException] | None = None
        self.finished: list[int] = []  # items finished since the last report

    def runs(self) -> list[tuple[int, int]]:
        """Take the finished items as runs ``(first, stop)`` of consecutive positions."""
        done = self.finished
        self.finished = []
        done.sort()
        runs: list[tuple[int, int]] = []
        first = prev = done[0]
        for k in done[1:]:
            if k != prev + 1:
                runs.append((first, prev + 1))
                first = k
            prev = k
        runs.append((first, prev + 1))
        return runs

    def outcome(self, first: int, stop: int) -> Outcome:
        errors = None
        if self.errors is not None:
            errors = {k - first: e for k, e in self.errors.items() if first <= k < stop} or None
        seconds = self.seconds[first:stop]
        return Outcome(self.values[first:stop], errors, sum(seconds), WORKER, seconds)


class AsyncioBackend(Backend):
    """Coroutines on one event loop: for I/O-bound ``async def`` functions.

    A plain ``def`` function runs on the loop itself and blocks it while it
    runs; use threads for blocking code.
    """

    # The "chunk" is the lot: how many items are pulled from the input at
    # once (the planner makes it min(LOT_MAX, workers)); items still go to
    # workers one by one. Timeouts and rate limits act per item: lots of one.
    # max_items_per_worker is refused: the workers are coroutines of one
    # process and one loop, with nothing of their own to recycle.
    traits = Traits("asyncio", default_workers=lambda: 100, runs_on_loop=True,
                    shared_lots=LOT_MAX, recycles_workers=False)

    def start(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._lot: _Lot | None = None
        self._dirty: list[_Lot] = []  # lots with finished, unreported items
        # timed item -> its own task, and the future its worker waits on
        self._inner: dict[Task, tuple[asyncio.Future[Any], asyncio.Future[bool]]] = {}
        self._closing = False
        self._halted = False  # closing, or the engine stopped: start no more items
        self._live = 0  # workers that have not ended
        init = self.options.initializer
        self._ready = None if init is None else self._loop.create_task(self._initialize(init))
        self._workers: list[asyncio.Task[None]] = []
        # One worker to begin with; the others start as lots bring items for
        # them (``_wake``), so workers=10_000 for 3 items starts 3 coroutines.
        self._spawn()

    def _spawn(self) -> None:
        self._live += 1
        self._workers.append(self._loop.create_task(self._run()))

    async def _initialize(self, init: Callable[..., Any]) -> None:
        result = init(*self.options.initargs)
        if inspect.isawaitable(result):
            await result

    def wake(self, everyone: bool) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wake(everyone)
        else:  # the input's reader thread, or a worker thread of a sink
            self._loop.call_soon_threadsafe(self._wake, everyone)

    def _wake(self, everyone: bool = False, count: int = 1) -> None:
        """Work may be available: wake ``count`` idle workers (or all).

        Workers end when the input is exhausted and they find nothing to do;
        if work appears after that (a retry), a worker is started again.
        """
        if everyone and self._engine.stopped:
            self._halted = True
        waiters = self._waiters
        while waiters and (everyone or count > 0):
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                count -= 1
        if not everyone and not self._halted:
            for _ in range(min(count, self.workers - self._live)):
                self._spawn()

    async def _wait(self, seconds: float) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(fut)
        handle = None
        if not math.isinf(seconds):
            handle = self._loop.call_later(seconds, _resolve, fut)
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        """One worker. A single coroutine, no nested ones: at 10,000 workers
        every object per worker counts."""
        engine = self._engine
        try:
            if self._ready is not None:
                await self._ready
        except BaseException as exc:
            self._live -= 1
            engine.fail_run(exc)
            return
        fn = self.fn
        timed = self.options.timeout is not None
        clock = time.perf_counter
        failed = False
        try:
            while not self._halted:
                lot = self._lot
                if lot is None or lot.next >= lot.size:
                    got = engine.acquire()
                    if isinstance(got, Wait):
                        if got is WAIT_FOR_SIGNAL and engine.exhausted:
                            # Nothing left to start: end rather than park, or
                            # 10,000 idle workers would wake up at the end to
                            # hear that there is no work. A retry that comes
                            # later starts a worker again (_wake).
                            return
                        await self._wait(got.seconds)
                        continue
                    if not isinstance(got, Work):
                        return  # DONE
                    lot = self._lot = _Lot(got.task)
                    if lot.size > 1 and (self._waiters or self._live < self.workers):
                        self._wake(count=lot.size - 1)  # idle or new workers: there is work
                k = lot.next
                lot.next = k + 1
                started = clock()
                try:
                    value = fn(lot.items[k])
                    if type(value) is _COROUTINE or inspect.isawaitable(value):
                        value = await (self._own_task(lot.task, value) if timed else value)
                except _Abandoned:
                    continue  # our item timed out; the engine has failed it already
                except (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit):
                    raise
                except BaseException as exc:  # SystemExit too: one item's failure
                    if isinstance(exc, _Carried):
                        exc = exc.error
                    value = None
                    failed = True
                    if lot.errors is None:
                        lot.errors = {}
                    lot.errors[k] = exc
                lot.seconds[k] = clock() - started
                lot.values[k] = value
                if not lot.finished:
                    if not self._dirty:
                        self._loop.call_soon(self._report)
                    self._dirty.append(lot)
                lot.finished.append(k)
                if failed:
                    # Reported at once: under all_or_nothing the batch must
                    # stop before this worker starts another item.
                    failed = False
                    self._report()
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as exc:  # Ctrl-C in fn, or a bug here: the run cannot go on
            engine.fail_run(exc)
            raise
        finally:
            self._live -= 1

    async def _own_task(self, task: Task, aw: Any) -> Any:
        """Await ``aw`` in a task of its own, so that ``abandon`` can cancel
        this item and nothing else, and need not wait for it to end.

        The worker waits on ``gate``, resolved when the item ends or when it
        is abandoned: an item that swallows its ``CancelledError`` then keeps
        running on its own (its result is dropped) while the worker goes on,
        as an abandoned thread does on the thread backend.

        Raises:
            _Abandoned: the item timed out and was left behind.
            _Carried: the item raised a BaseException that a task would
                re-raise out of the event loop (``SystemExit``).
        """
        inner = asyncio.ensure_future(_carry(aw))
        # True once abandoned; False once the item ended (whichever comes first).
        gate: asyncio.Future[bool] = self._loop.create_future()
        inner.add_done_callback(lambda _: _resolve(gate, False))
        self._inner[task] = (inner, gate)
        try:
            abandoned = await gate
        except asyncio.CancelledError:  # the worker is cancelled: so is its item
            inner.cancel()
            raise
        finally:
            self._inner.pop(task, None)
        if abandoned:
            # Even if the item already honoured its cancellation, the
            # CancelledError is ours, not the worker's: it goes on.
            if inner.done():
                _forget(inner)
            else:
                inner.add_done_callback(_forget)
            raise _Abandoned
        return inner.result()

    def _report(self) -> None:
        """Report what finished during this turn of the loop, run by run."""
        dirty, self._dirty = self._dirty, []
        for lot in dirty:
            for first, stop in lot.runs():
                self._engine.complete(lot.task, lot.outcome(first, stop), at=first)

    def abandon(self, task: Task) -> None:
        """Cancel the timed-out item and let its worker go on at once (see
        ``_own_task``): it never waits for the item to honour the cancellation."""
        held = self._inner.get(task)
        if held is not None:
            inner, gate = held
            inner.cancel()
            _resolve(gate, True)

    def shutdown(self, cancel: bool) -> None:
        self._closing = cancel
        self._halted = self._halted or cancel
        if cancel:
            if self._ready is not None:
                self._ready.cancel()
            for t in self._workers:
                t.cancel()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def ashutdown(self, cancel: bool) -> None:
        """Stop, then wait for the workers to end. Most have ended already:
        only the others are waited for (a gather over 10,000 finished tasks
        costs a callback each).

        Cancelled workers get ``CANCEL_GRACE`` seconds to end: one whose item
        swallows the cancellation is left to end on its own, rather than
        holding up Ctrl-C or the error that stopped the run.
        """
        self.shutdown(cancel)
        tasks = self._workers if self._ready is None else [self._ready, *self._workers]
        running = [t for t in tasks if not t.done()]
        if running:
            await asyncio.wait(running, timeout=CANCEL_GRACE if cancel else None)
        for t in tasks:
            if not t.done():
                t.add_done_callback(_forget)
            elif not t.cancelled():
                t.exception()  # retrieved: the run has reported it (fail_run)


def _resolve(fut: asyncio.Future[Any], value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


class _Abandoned(Exception):
    """The worker's item timed out and was left to end on its own."""


class _Carried(Exception):
    """A ``BaseException`` of an item run in a task of its own, carried out of
    it: a task re-raises ``SystemExit`` out of the event loop itself."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


async def _carry(aw: Any) -> Any:
    try:
        return await aw
    except (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, Exception):
        raise
    except BaseException as exc:
        raise _Carried(exc) from None


def _forget(task: asyncio.Future[Any]) -> None:
    """An abandoned item ended: its outcome is dropped (retrieved, so that
    asyncio does not log it as never retrieved)."""
    if not task.cancelled():
        task.exception()
