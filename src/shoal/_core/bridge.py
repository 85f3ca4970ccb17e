"""Crossing between synchronous code and event loops."""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

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

    Works with no loop (on a loop of its own, ``run_owned``) and inside an
    already running loop, such as a Jupyter cell, where it runs the coroutine
    on a fresh loop in a helper thread and blocks until it is done; Ctrl-C
    there cancels the coroutine, waits for it to end, and is raised.

    Raises:
        BaseException: whatever the coroutine raised; KeyboardInterrupt on Ctrl-C.
    """
    if not in_running_loop():
        return run_owned(coro)
    box: dict[str, Any] = {}
    started = threading.Event()

    def on_start(loop: asyncio.AbstractEventLoop, task: asyncio.Task[T]) -> None:
        box.update(loop=loop, task=task)
        started.set()

    def target() -> None:
        try:
            box["value"] = run_owned(coro, started=on_start)
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()

    t = threading.Thread(target=target, name="shoal-arun", daemon=True)
    t.start()
    try:
        t.join()
    except KeyboardInterrupt:
        # The coroutine runs on another thread's loop: stop it the way a loop
        # is stopped (cancel its main task), and let it end (it records what
        # finished) before Ctrl-C goes on.
        started.wait()
        _cancel_threadsafe(box.get("loop"), box.get("task"))
        t.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


#: how long tasks still running when an owned loop ends get to honour their
#: cancellation before they are left behind (see ``run_owned``)
CANCEL_GRACE = 0.1


def run_owned(
    coro: Coroutine[Any, Any, T],
    started: Callable[[asyncio.AbstractEventLoop, asyncio.Task[T]], object] | None = None,
) -> T:
    """``asyncio.run(coro)``, except that the loop never waits for a task that
    will not end.

    ``asyncio.run`` ends by cancelling every task left and waiting for all of
    them: a coroutine that swallows ``CancelledError`` (one shoal abandoned
    after its timeout) would hang it forever. Here the tasks left get
    ``CANCEL_GRACE`` seconds; the ones still running after that are left to
    end on their own, on this loop, run by a daemon thread that closes it
    when they are done (as a thread the thread backend abandoned finishes its
    call in the background). As with ``asyncio.run`` (3.11), Ctrl-C on the
    main thread cancels the coroutine's task first, then raises
    ``KeyboardInterrupt``. ``started(loop, task)`` is called once the task exists.

    Raises:
        BaseException: whatever the coroutine raised; KeyboardInterrupt on Ctrl-C.
    """
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(coro)
    if started is not None:
        started(loop, task)
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted or task.done():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        interrupted = True
        task.cancel()
        loop.call_soon_threadsafe(_nothing)  # wake the loop if it is in select()

    handler: Callable[[int, FrameType | None], None] | None = None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        handler = on_sigint
        signal.signal(signal.SIGINT, handler)
    try:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            if handler is not None and signal.getsignal(signal.SIGINT) is handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)
    finally:
        _close_owned(loop)


def _close_owned(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop``, then close it, or hand the tasks that
    ignore their cancellation to a thread that closes it when they end."""
    import asyncio

    try:
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=CANCEL_GRACE))
        for t in pending:
            if t.done() and not t.cancelled() and t.exception() is not None:
                loop.call_exception_handler({
                    "message": "unhandled exception while shoal closed its event loop",
                    "exception": t.exception(), "task": t})
        stubborn = {t for t in pending if not t.done()}
        if stubborn:
            threading.Thread(target=_finish_in_background, args=(loop, stubborn),
                             name="shoal-loop-left", daemon=True).start()
            return
        _finalize(loop)
    finally:
        asyncio.set_event_loop(None)


def _finish_in_background(loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[Any]]) -> None:
    import asyncio

    loop.run_until_complete(asyncio.wait(tasks))
    _finalize(loop)


def _finalize(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _cancel_threadsafe(loop: asyncio.AbstractEventLoop | None,
                       task: asyncio.Task[Any] | None) -> None:
    if loop is None or task is None:
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # the loop has closed: the task is over
        pass


def _nothing() -> None:
    return None


def iterate_in_thread(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Iterate an async iterator from synchronous code.

    The async iterator runs on its own loop in a helper thread and is pulled
    only when the caller asks for the next value: nothing is fetched ahead,
    so a value that reaches the async side's consumer (``imap`` frees room
    in the run's ``max_in_flight`` then) is one the caller has. Each value
    costs one wake-up of each thread. When the caller stops early the async
    iterator is cancelled and closed.
    """
    import asyncio

    values: queue.SimpleQueue[Any] = queue.SimpleQueue()
    box: dict[str, Any] = {}  # the pump's loop, task and request queue, once it runs
    started = threading.Event()

    async def pump() -> None:
        wants: asyncio.Queue[None] = asyncio.Queue()
        box.update(loop=asyncio.get_running_loop(), task=asyncio.current_task(), wants=wants)
        started.set()
        agen = make()
        try:
            while True:
                await wants.get()  # the caller asks for one more value
                try:
                    value = await agen.__anext__()
                except StopAsyncIteration:
                    return
                values.put(value)
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

    def target() -> None:
        try:
            run_owned(pump())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            values.put(_Raised(exc))
        finally:
            started.set()
            values.put(_DONE)

    t = threading.Thread(target=target, name="shoal-aiter", daemon=True)
    t.start()
    started.wait()
    try:
        while True:
            _ask(box)
            got = values.get()
            if got is _DONE:
                return
            if isinstance(got, _Raised):
                raise got.error
            yield got
    finally:
        _cancel_threadsafe(box.get("loop"), box.get("task"))
        t.join()


def _ask(box: dict[str, Any]) -> None:
    """Ask the pump for one more value (if it still runs: else what it
    sent last, its error or its end, is in the queue already)."""
    loop = box.get("loop")
    if loop is None:
        return
    try:
        loop.call_soon_threadsafe(box["wants"].put_nowait, None)
    except RuntimeError:  # the loop has closed
        pass
