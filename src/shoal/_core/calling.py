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
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
    the worker timed each item, holds their seconds.
    """

    values: list[Any]
    errors: dict[int, BaseException] | None
    duration: float  # seconds for all the items reported
    worker: str
    durations: list[float] | None = None


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


def run_chunk(call: Callable[[Any], Any], items: Iterable[Any], worker: str) -> Outcome:
    """Run ``call`` on every item (iterated once, in order); an exception fails that item alone."""
    start = time.perf_counter()
    values: list[Any] = []
    errors: dict[int, BaseException] | None = None
    it = iter(items)
    while True:
        # One try per stretch of successes, not per item, and list.extend(map())
        # keeps what it appended before an exception: tiny items cost about
        # what a list comprehension costs, and no item is ever run twice.
        try:
            values.extend(map(call, it))
            break
        except Exception as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = exc
            values.append(None)
    return Outcome(values, errors, time.perf_counter() - start, worker)


async def run_chunk_async(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    worker: str,
    wrap: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
) -> Outcome:
    """``run_chunk`` for the event loop: awaitable results are awaited.

    ``wrap`` may turn each awaitable into another before it is awaited (the
    asyncio backend gives timed items a task of their own, to cancel them).
    """
    start = time.perf_counter()
    values: list[Any] = []
    errors: dict[int, BaseException] | None = None
    for k, x in enumerate(items):
        try:
            value = fn(x)
            if type(value) is _COROUTINE or inspect.isawaitable(value):
                value = await (value if wrap is None else wrap(value))
            values.append(value)
        except Exception as exc:
            values.append(None)
            if errors is None:
                errors = {}
            errors[k] = exc
    return Outcome(values, errors, time.perf_counter() - start, worker)
