"""``shoal.Executor``: a ``concurrent.futures.Executor`` on shoal's engine.

One long-lived run per executor, whose input is the queue of submitted calls::

    submit(fn, *args, **kw) ─▶ _Calls: queue of (Future, call)   cancel() works while queued
                                  │ pull() by a free worker: futures set running,
                                  │ numbered in pull order = the engine's indices
                                  ▼
              Run(invoke, _Calls, ordered=False, on_error="collect_errors")
                 engine ─▶ backend workers (threads, processes, asyncio, dask)
                                  │ settled segments
    consumer thread ─▶ futures[index].set_result(value) / set_exception(error)

Where a call runs in this process (threads, asyncio, sequential) its item
carries its future, and the worker completes it the moment the call returns
(``invoke_here``): the engine hands out chunks of tiny calls, and a call must
not wait for the rest of its chunk. The consumer then completes only what the
worker could not: a timeout, a failure the retry policy may still retry. A
call sent to a process or a Dask worker completes when its chunk's report
arrives (docs/executor.md: chunk_size=1 for one report per call).

What the engine adds to the standard executors: a worker process that dies
fails only the future of the item it was running (``WorkerCrashed``) and the
executor goes on; ``timeout=`` per call (a hung process is killed, a thread
abandoned and replaced); ``retries=`` with the engine's retry policy. Only
``submit`` and ``shutdown`` are written here: ``map`` and the context
manager are ``concurrent.futures.Executor``'s own, built on ``submit``.
docs/executor.md lists where shoal deliberately differs.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import inspect
import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypedDict, TypeVar, overload

from shoal._core.calling import run_awaitable
from shoal._core.consumer import asegments, segments
from shoal._core.errors import BrokenBackend, InvalidOptionError
from shoal._core.options import Options
from shoal._core.results import Segment
from shoal._core.run import Run
from shoal._core.source import Pulled, Source

if TYPE_CHECKING:
    from collections.abc import Mapping

    from typing_extensions import Unpack

    from shoal._core.signatures import Progress, Rate, Retries

P = ParamSpec("P")
T = TypeVar("T")
ExecutorBackend = Literal["sequential", "threads", "asyncio", "processes", "dask"]

#: options a run has that an executor decides itself, and why
_REFUSED = {
    "ordered": "futures complete as they finish",
    "on_error": "every call's exception goes to its own future",
    "total": "an executor's calls have no known total",
    "checkpoint": "calls of arbitrary functions cannot be fingerprinted",
    "workers": "its name here is max_workers (the first argument)",
}


#: a call sent to another process: the function, its arguments, its keywords
Call = tuple[Callable[..., Any], tuple[Any, ...], "Mapping[str, Any]"]


def invoke(call: Call) -> Any:
    """Run one call in a worker process or a Dask worker; an awaitable result
    is awaited on the worker's loop (``submit(async_fn, x)`` gives the value)."""
    fn, args, kwargs = call
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return run_awaitable(value)
    return value


class _Here:
    """A call run in this process, with what its worker needs to complete it.

    Once complete, it lets go of its future, function and arguments (the
    engine holds the item until the consumer takes it; the caller must not
    find its objects kept alive by the executor meanwhile).
    """

    __slots__ = ("args", "calls", "final", "fn", "future", "index", "kwargs")

    def __init__(self, calls: _Calls, index: int, future: concurrent.futures.Future[Any],
                 call: Call, final: bool) -> None:
        self.calls = calls
        self.index = index
        self.future: concurrent.futures.Future[Any] | None = future
        self.fn: Callable[..., Any] | None = call[0]
        self.args: tuple[Any, ...] = call[1]
        self.kwargs: Mapping[str, Any] = call[2]
        self.final = final  # no retry can follow a failure

    def finish(self, value: Any, error: BaseException | None) -> None:
        future = self.future
        if future is None:
            return  # completed already (by an abandoned attempt that came back)
        self.future = self.fn = None
        self.args, self.kwargs = (), {}
        self.calls.futures.pop(self.index, None)
        _complete(future, value, error)


def _complete(future: concurrent.futures.Future[Any], value: Any,
              error: BaseException | None) -> None:
    """Complete ``future`` unless it is done already (the engine timed the call out)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


#: ``calls``: the executor whose call this thread is running (its fn or a done-callback)
_serving = threading.local()


def invoke_here(call: _Here) -> None:
    """Run one call in this process and complete its future at once.

    The value is not returned (the future has it, and the engine need not
    hold it); an exception is raised for the engine to retry or settle, and
    completes the future here only when no retry can follow (``final``).
    """
    fn = call.fn
    if fn is None:
        return
    _serving.calls = call.calls
    try:
        value = fn(*call.args, **call.kwargs)
        if inspect.isawaitable(value):
            value = run_awaitable(value)
    except BaseException as exc:
        if call.final:
            call.finish(None, exc)
        raise
    else:
        call.finish(value, None)
    finally:
        _serving.calls = None


async def ainvoke_here(call: _Here) -> None:
    """``invoke_here`` on the asyncio backend, awaited on the run's loop."""
    fn = call.fn
    if fn is None:
        return
    try:
        value = fn(*call.args, **call.kwargs)
        if inspect.isawaitable(value):
            value = await value
    except BaseException as exc:
        if call.final:
            call.finish(None, exc)
        raise
    call.finish(value, None)


class ExecutorOptions(TypedDict, total=False):
    """``shoal.Executor``'s further options, as in ``shoal.Options``."""

    rate: Rate
    max_in_flight: int | None
    chunk_size: int | Literal["auto"]
    progress: Progress
    max_items_per_worker: int | None
    address: str | None
    backend_options: Mapping[str, Any]


class BrokenExecutor(BrokenBackend, concurrent.futures.BrokenExecutor):
    """The executor's run broke (its initializer failed, its backend died):
    no call will run. Both a ``shoal.BrokenBackend`` and a
    ``concurrent.futures.BrokenExecutor``."""


class _Calls(Source):
    """The submitted calls, as the run's input (see the module docstring).

    ``_lock`` guards everything below it but ``futures``, which maps a
    pulled call's index to its future until it is completed: added under the
    lock by a pull, removed (a single, atomic dict operation) by the consumer
    thread or, for a call run in this process, by its worker.
    """

    def __init__(self, here: bool, final: bool) -> None:
        self.here = here  # items are _Here (run in this process), else the bare calls
        self._final = final
        # The engine's input_ready. Called only after a pull found the queue
        # empty, so never before the backend has started.
        self.on_ready: Callable[[], None] = _nothing
        self._lock = threading.Lock()
        self._queue: deque[tuple[concurrent.futures.Future[Any], Call]] = deque()
        self.futures: dict[int, concurrent.futures.Future[Any]] = {}
        self._pulled = 0
        self._closed = False
        self._starved = False  # the last pull found nothing: the next submit says so
        self._broken: BrokenExecutor | None = None
        self.ended = False  # the run is over: nobody listens to on_ready
        self.begun = threading.Event()  # a worker has asked for calls, or the run ended

    def put(self, future: concurrent.futures.Future[Any], call: Call) -> None:
        """Queue a call.

        Raises:
            BrokenExecutor: the run broke.
            RuntimeError: after shutdown (as the standard executors).
        """
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise RuntimeError("cannot schedule new futures after "
                                   + ("interpreter shutdown" if _exiting else "shutdown"))
            self._queue.append((future, call))
            tell, self._starved = self._starved, False
        if tell:
            self._notify()

    def pull(self, n: int) -> Pulled:
        items: list[Any] = []
        with self._lock:
            queue = self._queue
            while queue and len(items) < n:
                future, call = queue.popleft()
                if future.set_running_or_notify_cancel():  # else cancelled while queued
                    index = self._pulled + len(items)
                    self.futures[index] = future
                    items.append(_Here(self, index, future, call, self._final) if self.here
                                 else call)
            self._pulled += len(items)
            exhausted = self._closed and not queue
            if not items and not exhausted:
                self._starved = True
        self.begun.set()
        return Pulled(items, exhausted)

    def take(self, index: int) -> concurrent.futures.Future[Any] | None:
        """The future of a settled call; None if its worker completed it already."""
        return self.futures.pop(index, None)

    def finish(self, cancel_futures: bool) -> None:
        """No more calls; ``cancel_futures``: cancel the queued ones too."""
        with self._lock:
            self._closed = True
            cancelled: list[concurrent.futures.Future[Any]] = []
            if cancel_futures:
                cancelled = [future for future, _ in self._queue]
                self._queue.clear()
            # A starved engine must pull again to learn that the input ended;
            # any other will see it at its next pull.
            tell, self._starved = self._starved, False
        for future in cancelled:
            future.cancel()
        if tell:
            self._notify()

    def _notify(self) -> None:
        if self.ended:
            return
        try:
            self.on_ready()
        except RuntimeError:  # the run ended meanwhile (its event loop closed)
            if not self.ended:
                raise

    def end(self, error: BaseException | None) -> None:
        """The run is over (``error``: why it broke): fail whatever is left."""
        reason = "the executor's run ended without a result for this call"
        broken = BrokenExecutor(f"{reason}: {error!r}" if error else reason)
        broken.__cause__ = error
        with self._lock:
            self.ended = True
            self._closed = True
            if error is not None:
                self._broken = broken
            queued = [future for future, _ in self._queue]
            self._queue.clear()
            running = list(self.futures.values())
            self.futures.clear()
        self.begun.set()
        for future in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(broken)
        for future in running:
            _complete(future, None, broken)  # unless its worker completed it meanwhile


def _settle(segs: list[Segment], calls: _Calls) -> None:
    """Complete the futures of settled calls (those a worker has not completed)."""
    take = calls.take
    for seg in segs:
        if seg.results is None:
            if calls.here:
                continue  # every call succeeded, and its worker completed its future
            for k, value in enumerate(seg.values, seg.start):
                future = take(k)
                if future is not None:
                    _complete(future, value, None)
            continue
        for r in seg.results:
            future = take(r.index)
            if future is not None:
                _complete(future, r.value, r.error)


def _consume(run: Run, calls: _Calls) -> None:
    """The consumer thread: deliver every settled call to its future until the input ends."""
    error: BaseException | None = None
    try:
        if run.backend.traits.runs_on_loop:
            import asyncio

            asyncio.run(_aconsume(run, calls))
        else:
            with contextlib.closing(segments(run)) as stream:
                for segs in stream:
                    _settle(segs, calls)
                    del segs  # values are the caller's now: hold none while waiting
    except BaseException as exc:  # the run broke: every waiting future must hear it
        error = exc
    finally:
        try:
            run.close(None)
        finally:
            calls.end(error)
            with _live_lock:
                _live.pop(calls, None)


async def _aconsume(run: Run, calls: _Calls) -> None:
    async with contextlib.aclosing(asegments(run)) as stream:
        async for segs in stream:
            _settle(segs, calls)
            del segs


def _nothing() -> None:
    return None


# Executors whose run is still going, even after their Executor object was
# garbage-collected (its calls still complete, as with the standard ones):
# at interpreter exit, each is shut down and waited for.
_live: dict[_Calls, threading.Thread] = {}
_live_lock = threading.Lock()
_exiting = False
_ids = itertools.count()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    with _live_lock:
        live = list(_live.items())
    for calls, _ in live:
        calls.finish(cancel_futures=False)
    for _, thread in live:
        thread.join()


# As concurrent.futures does: at the main thread's end, before atexit
# callbacks run, so that the pools the calls run on (closed by their own
# finalizers at exit) are still there to finish them.
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_at_exit)


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running calls on shoal's backends.

    ``submit(fn, *args, **kwargs)`` returns a ``concurrent.futures.Future``;
    ``map``, ``shutdown``, the context manager, ``wait``/``as_completed`` and
    ``loop.run_in_executor`` behave as with the standard executors.

    Args:
        max_workers: workers at once (the backend's default when None:
            threads min(32, CPUs + 4), processes one per CPU, asyncio 100).
        backend: "threads" (default), "processes", "asyncio", "dask" or
            "sequential" (one worker).
        initializer: run once per worker before its first call, with initargs.
        timeout: seconds per call; a call past it fails with TimeoutError
            (its process is killed, its thread abandoned and replaced).
        retries: attempts after the first (an int or a RetryPolicy).
        **options: rate, max_in_flight, chunk_size, progress,
            max_items_per_worker, address, backend_options (see shoal.Options).

    Raises:
        InvalidOptionError: a bad value, ``backend="auto"`` or an option an
            executor decides itself (``ordered``, ``on_error``, ...);
            ``max_workers`` <= 0 (also a ValueError, as the standard ones).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        backend: ExecutorBackend = "threads",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        timeout: float | None = None,
        retries: Retries = 0,
        **options: Unpack[ExecutorOptions],
    ) -> None:
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int) or max_workers <= 0):
            raise InvalidOptionError(f"max_workers must be greater than 0, got {max_workers!r}")
        if backend == "auto":  # type: ignore[comparison-overlap]
            raise InvalidOptionError(
                'an Executor runs calls of any function, so backend="auto" has nothing to '
                'measure; choose one: "threads" (the default), "processes", "asyncio", "dask"')
        for name in options:
            if name in _REFUSED:
                raise InvalidOptionError(f"shoal.Executor takes no {name}= ({_REFUSED[name]})")
        opts = Options.from_kwargs("collect_errors", {
            **options, "backend": backend, "workers": max_workers, "initializer": initializer,
            "initargs": tuple(initargs), "timeout": timeout, "retries": retries,
            "ordered": False,
        })
        here = backend not in ("processes", "dask")
        # retries=0: a failed call is settled at once, never retried
        calls = _Calls(here, final=opts.retries.retries == 0)
        fn: Callable[[Any], Any] = invoke
        if here:
            fn = ainvoke_here if backend == "asyncio" else invoke_here
        run = Run(fn, calls, opts)
        calls.on_ready = run.engine.input_ready
        self._calls = calls
        self._thread = threading.Thread(target=_consume, args=(run, calls), daemon=True,
                                        name=f"shoal-executor-{next(_ids)}")
        with _live_lock:
            _live[calls] = self._thread
        self._thread.start()
        # Started, as the standard executors are once they have a call: the first
        # call is then taken by a waiting worker at once.
        calls.begun.wait()
        # Garbage-collected without shutdown: its calls still complete, then the run ends.
        weakref.finalize(self, calls.finish, False).atexit = False

    @overload
    def submit(self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[T]: ...
    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[T]: ...
    def submit(self, fn: Callable[P, Any], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; its ``Future`` holds the result.

        Raises:
            RuntimeError: after ``shutdown``.
            BrokenExecutor: the executor's run broke (its initializer failed).
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put(future, (fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; ``wait``: return once every call has finished and every
        worker (thread or process) is gone (not when called from one of this
        executor's own calls or done-callbacks: they cannot wait for
        themselves); ``cancel_futures``: cancel the calls no worker has taken
        yet."""
        self._calls.finish(cancel_futures)
        # From one of its own calls or callbacks it cannot wait for itself
        # (the standard executors raise there: a thread cannot join itself).
        inside = threading.current_thread() is self._thread \
            or getattr(_serving, "calls", None) is self._calls
        if wait and not inside:
            self._thread.join()
