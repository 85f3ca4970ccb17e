"""Crossing between synchronous code and event loops."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def in_running_loop() -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # never imported, so no loop can be running
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code and return its result.

    Works with no loop (``asyncio.run``) and inside an already running loop,
    such as a Jupyter cell, where it runs the coroutine on a fresh loop in a
    helper thread and blocks until it is done.

    Raises:
        BaseException: whatever the coroutine raised.
    """
    import asyncio

    if not in_running_loop():
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name="shoal-arun", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def iterate_in_thread(
    make: Callable[[], AsyncIterator[T]], maxsize: int = 64
) -> Iterator[T]:
    """Iterate an async iterator from synchronous code.

    The async iterator runs on its own loop in a helper thread; values cross
    through a bounded queue (so a slow consumer holds the producer back). When
    the consumer stops early the async iterator is cancelled and closed.
    """
    import asyncio

    q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
    stop = threading.Event()
    loop_box: dict[str, Any] = {}

    async def pump() -> None:
        loop_box["task"] = asyncio.current_task()
        loop_box["loop"] = asyncio.get_running_loop()
        agen = make()
        try:
            async for value in agen:
                while True:
                    if stop.is_set():
                        return
                    try:
                        q.put_nowait(value)
                        break
                    except queue.Full:
                        await asyncio.sleep(0.005)
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

    def target() -> None:
        try:
            asyncio.run(pump())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            q.put(_Raised(exc))
        q.put(_DONE)

    t = threading.Thread(target=target, name="shoal-aiter", daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            if isinstance(got, _Raised):
                raise got.error
            yield got
    finally:
        stop.set()
        loop = loop_box.get("loop")
        task = loop_box.get("task")
        if t.is_alive() and loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop already closed
                pass
        while t.is_alive():
            try:  # unblock a producer waiting on a full queue
                q.get(timeout=0.05)
            except queue.Empty:
                pass
