"""The asyncio backend: a fixed set of worker coroutines on the consumer's loop.

Why workers and not one ``asyncio.Task`` per item: creating a task, a done
callback and a wake-up per item costs more than the work of a short coroutine;
with 100,000 items at concurrency 10,000 a task-per-item loop reaches ~40% of
the ideal time on a 2-core machine, a worker pool ~85%. Each worker awaits the
user's coroutine directly, so an item costs one ``await``.

Everything here runs on the loop's thread (completions and the consumer too),
so the waiter queue needs no lock. A timed-out item is cancelled for real: the
worker running it receives ``CancelledError`` inside the user's coroutine and
goes on with the next item.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend
from shoal._calling import Outcome, run_chunk_async

if TYPE_CHECKING:
    from shoal._engine import Engine, Task


class AsyncioBackend(Backend):
    """Coroutines on one event loop: for I/O-bound ``async def`` functions.

    A plain ``def`` function runs on the loop itself and blocks it while it
    runs; use threads for blocking code.
    """

    name = "asyncio"
    runs_on_loop = True

    @classmethod
    def default_workers(cls) -> int:
        return 100

    def auto_chunk_size(self, total: int | None) -> int:
        # With far more items than workers, a worker that takes a few items
        # at a time pays the engine's per-task cost once per chunk; four
        # chunks per worker keep the tail balanced. Timeouts and rate limits
        # act per item, so they keep chunks of one.
        if total is None or self.options.timeout is not None or self.options.rate is not None:
            return 1
        return max(1, min(64, total // (4 * self.workers)))

    def start(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._current: dict[int, Task] = {}  # worker id -> task it runs
        self._inner: dict[int, asyncio.Future[Any]] = {}  # worker id -> item task (timeouts)
        self._closing = False
        engine.on_capacity = self._wake
        self._ready = self._loop.create_task(self._initialize())
        self._workers = {wid: self._loop.create_task(self._run(wid)) for wid in range(self.workers)}

    async def _initialize(self) -> None:
        init = self.options.initializer
        if init is not None:
            result = init(*self.options.initargs)
            if inspect.isawaitable(result):
                await result

    def _wake(self, everyone: bool = False) -> None:
        if everyone:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()
            return
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

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

    async def _run(self, wid: int) -> None:
        try:
            await self._ready
        except BaseException as exc:
            self._engine.fail_run(exc)
            return
        engine = self._engine
        fn = self.fn
        name = f"asyncio-{wid}"
        timed = self.options.timeout is not None
        while not self._closing:
            got = engine.acquire()
            if got is None:
                return
            if isinstance(got, float):
                await self._wait(got)
                continue
            if self._waiters:
                self._wake()  # pass the baton: there may be more work
            if timed:
                outcome = await self._run_timed(wid, got, name)
                if outcome is None:
                    continue  # our item timed out; the engine has failed it already
            else:
                outcome = await run_chunk_async(fn, got.items, name)
            engine.complete(got, outcome)

    async def _run_timed(self, wid: int, task: Task, name: str) -> Outcome | None:
        """Run a task whose items have a timeout; None if it was abandoned."""
        self._current[wid] = task

        def own_task(aw: Awaitable[Any]) -> Awaitable[Any]:
            # Its own task, so that abandon() cancels this item and nothing else.
            inner = asyncio.ensure_future(aw)
            self._inner[wid] = inner
            return inner

        try:
            return await run_chunk_async(self.fn, task.items, name, own_task)
        except asyncio.CancelledError:
            if self._closing or not task.closed:
                raise
            return None
        finally:
            self._current.pop(wid, None)
            self._inner.pop(wid, None)

    def abandon(self, task: Task) -> None:
        for wid, running in list(self._current.items()):
            inner = self._inner.get(wid)
            if running is task and inner is not None:
                inner.cancel()

    def shutdown(self, cancel: bool) -> None:
        self._closing = cancel
        if cancel:
            self._ready.cancel()
            for t in self._workers.values():
                t.cancel()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def aclose(self) -> None:
        await asyncio.gather(self._ready, *self._workers.values(), return_exceptions=True)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
