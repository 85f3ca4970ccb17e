"""Calling the user's function on a chunk of items, in any kind of worker.

``Outcome`` is what a worker reports for a chunk: one value per item and the
exceptions of those that raised. ``run_chunk`` is shared by the sequential and
thread backends and by process workers, so "a failure is data" is implemented
once. An ``async def`` function gets an event loop of its own per worker thread
(created lazily, reused for every item the thread runs).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal._core.bridge import arun, in_running_loop

if TYPE_CHECKING:
    import asyncio

_local = threading.local()
_COROUTINE = types.CoroutineType


@dataclass(slots=True)
class Outcome:
    """Results of running consecutive items of a task.

    ``values[k]`` is the value of the k-th item reported (None where it
    failed); ``errors`` maps such positions to the exception, and is None when
    every item succeeded (the common case costs no dict). ``durations``, when
    the worker timed each item, holds their seconds. ``cpu`` is the CPU time
    the worker's thread spent on them, when measured (the auto probe reads
    it). ``stopped``: the worker ran only these items of a longer task and
    stopped (all_or_nothing after a failure); the engine gives the rest back.
    ``item_bytes``: pickled bytes per item, of the larger of items and results,
    when the backend pickled them (chunk sizes stay under its frame budget).
    ``waited``: how long the worker's thread was ready to run but not running
    (another thread or process had the CPU), when measured: the auto probe
    subtracts it, so that CPU-bound work on a busy machine is not taken for
    work that waits.
    """

    values: list[Any]
    errors: dict[int, BaseException] | None
    duration: float  # seconds for all the items reported
    worker: str
    durations: list[float] | None = None
    cpu: float | None = None
    stopped: bool = False
    item_bytes: float = 0.0
    waited: float | None = None  # seconds runnable but not running (measured on request)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them and objects with async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the bound __call__ itself
    return call is not None and inspect.iscoroutinefunction(call)


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        import asyncio

        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def close_thread_loop() -> None:
    """Close this thread's event loop, if ``run_awaitable`` made one."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is not None and not loop.is_closed():
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    _local.loop = None


def run_awaitable(aw: Awaitable[Any]) -> Any:
    """Run an awaitable to completion on this thread's own event loop.

    On a thread whose loop is already running (sync code called from a
    notebook cell), the awaitable runs on a helper thread instead.
    """
    if in_running_loop():

        async def wrap() -> Any:
            return await aw

        return arun(wrap())
    return _thread_loop().run_until_complete(aw)


def sync_caller(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A plain callable for ``fn``; async functions run on the thread's loop."""
    if is_async_callable(fn):
        return lambda item: run_awaitable(fn(item))
    return fn


def worker_name() -> str:
    return threading.current_thread().name


def run_chunk(
    call: Callable[[Any], Any],
    items: Iterable[Any],
    worker: str,
    *,
    stop_on_error: bool = False,
    halted: Callable[[], bool] | None = None,
    measure_wait: bool = False,
) -> Outcome:
    """Run ``call`` on every item (iterated once, in order); an exception fails that item alone.

    Any exception but ``KeyboardInterrupt`` is the item's own failure
    (``SystemExit`` from argparse or ``sys.exit`` in a helper included): it
    never fails the items before or after it. ``stop_on_error``
    (all_or_nothing): stop after the first failure; ``halted``: checked
    before each item, stop when it says so (another worker's failure). Either
    way the outcome is ``stopped`` and holds only the items that ran.
    ``measure_wait``: also measure ``Outcome.waited`` (a file read each side).
    """
    wait0 = runqueue_wait() if measure_wait else None
    start = time.perf_counter()
    cpu0 = time.thread_time()
    values: list[Any] = []
    errors: dict[int, BaseException] | None = None
    it = iter(items) if halted is None else _until_halted(items, halted)
    stopped = False
    while True:
        # One try per stretch of successes, not per item, and list.extend(map())
        # keeps what it appended before an exception: tiny items cost about
        # what a list comprehension costs, and no item is ever run twice.
        try:
            values.extend(map(call, it))
            break
        except KeyboardInterrupt as interrupt:
            # The items that finished before Ctrl-C are kept: the inline
            # backend reports them before the interrupt reaches the caller.
            interrupt.shoal_partial = Outcome(  # type: ignore[attr-defined]
                values, errors, time.perf_counter() - start, worker, stopped=True)
            raise
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = exc
            values.append(None)
            if stop_on_error:
                stopped = True
                break
    if halted is not None and halted():
        stopped = True
    outcome = Outcome(values, errors, time.perf_counter() - start, worker,
                      cpu=time.thread_time() - cpu0, stopped=stopped)
    if wait0 is not None:
        wait1 = runqueue_wait()
        outcome.waited = None if wait1 is None else wait1 - wait0
    return outcome


def runqueue_wait() -> float | None:
    """Seconds this thread has spent ready to run but not running, or None
    where the system does not say (Linux: /proc/thread-self/schedstat)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _until_halted(items: Iterable[Any], halted: Callable[[], bool]) -> Iterator[Any]:
    for item in items:
        if halted():
            return
        yield item


async def run_chunk_async(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    worker: str,
    *,
    stop_on_error: bool = False,
) -> Outcome:
    """``run_chunk`` for the event loop (the inline backend under a coroutine
    consumer): awaitable results are awaited, on the consumer's loop.

    Raises:
        KeyboardInterrupt, asyncio.CancelledError: never an item's failure.
    """
    import asyncio  # loaded already: this runs on a loop

    start = time.perf_counter()
    cpu0 = time.thread_time()
    values: list[Any] = []
    errors: dict[int, BaseException] | None = None
    for k, x in enumerate(items):
        try:
            value = fn(x)
            if type(value) is _COROUTINE or inspect.isawaitable(value):
                value = await value
            values.append(value)
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except BaseException as exc:
            values.append(None)
            if errors is None:
                errors = {}
            errors[k] = exc
            if stop_on_error:
                break
    return Outcome(values, errors, time.perf_counter() - start, worker,
                   cpu=time.thread_time() - cpu0, stopped=len(values) < len(items))
