"""``shoal.Pool``: workers kept between calls.

Every ``shoal.map`` starts its workers and stops them; a pool starts them
once and lends them to each of its calls::

    Pool ── _Sets: per backend kind, idle WarmWorkers (+ those lent out)
      │        ▲ take(kind) / give_back()       (warm_class(kind) makes them)
      └─ call ─ _Lease: the lookup one Run uses (Run(..., warm=lease))
                 └─ ended when the call has consumed its run (or failed)

A ``Run`` asks its lookup for the warm workers of the kind it runs on
(``backend="auto"`` may ask for two: the probe's and the chosen one); a
kind without warm workers (``warm_class`` is None) starts its own for that
call, as ``shoal.map`` does. Calls that overlap (an ``imap`` still being
read when the next call starts, calls from several threads) each get a set:
the pool makes another and keeps it for later calls.

The options of the workers (``backend``, ``workers``, ``initializer``,
``initargs``, ``max_items_per_worker``, ``address``, ``backend_options``)
are the pool's, set once; every other option may be given per call and
overrides the pool's default for it. One exception: a pool made with
``backend="auto"`` (the default) also takes ``backend=`` per call, to run
that call on the workers of the kind named (kept like the others).

Closing: ``close()``, leaving the ``with`` block, garbage collection (a
``weakref.finalize``) and interpreter exit (the same finalizer, run by
``atexit``) close every set; a call still running then fails with
``BrokenBackend``. ``_Sets`` lives apart from the ``Pool`` so that the
finalizer can close it without keeping the pool alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from shoal._backends import backend_class, warm_class
from shoal._backends._base import WarmWorkers
from shoal._core import planner
from shoal._core.api import (
    NotCollect,
    amap_values,
    areport,
    astream,
    make_run,
    map_values,
    report,
    stream,
)
from shoal._core.arguments import spread
from shoal._core.errors import BrokenBackend, InvalidOptionError
from shoal._core.options import OnError, Options
from shoal._core.results import BatchReport, ItemResult
from shoal._core.run import Run
from shoal._core.signatures import WORKER_OPTIONS, documented

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from shoal._core.signatures import (
        BackendName,
        PoolDefaults,
        PoolMapOptions,
        PoolRunOptions,
        PoolStreamOptions,
    )

T = TypeVar("T")
A = TypeVar("A")

_CLOSED = "this shoal.Pool is closed; make a new one (or use shoal.map for a single call)"


class _Sets:
    """The pool's warm workers, by backend kind (see the module docstring)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        # _lock guards everything below.
        self._lock = threading.Lock()
        self._idle: dict[str, list[WarmWorkers]] = {}
        self._lent: dict[WarmWorkers, str] = {}  # set -> its kind
        self._runs: set[Run] = set()  # calls in progress: failed if the pool closes
        self.closed = False

    def take(self, kind: str) -> WarmWorkers | None:
        """An idle set of ``kind``, or a new one; None if the kind has none.

        Raises:
            BrokenBackend: the pool is closed.
        """
        cls = warm_class(kind)
        if cls is None:
            return None
        with self._lock:
            if self.closed:
                raise BrokenBackend(_CLOSED)
            idle = self._idle.get(kind)
            if idle:
                workers = idle.pop()
                self._lent[workers] = kind
                return workers
        workers = cls(self.options)  # outside the lock: starting may take a while
        with self._lock:
            if not self.closed:
                self._lent[workers] = kind
                return workers
        workers.close(True)
        raise BrokenBackend(_CLOSED)

    def give_back(self, sets: Iterable[WarmWorkers], broken: bool) -> None:
        """A call is over: its sets are idle again (closed instead if it broke)."""
        doomed: list[WarmWorkers] = []
        with self._lock:
            for workers in sets:
                kind = self._lent.pop(workers, None)
                if kind is None:
                    continue  # closed with the pool already
                if broken or self.closed:
                    doomed.append(workers)
                else:
                    self._idle.setdefault(kind, []).append(workers)
        for workers in doomed:
            workers.close(True)

    def watch(self, run: Run, running: bool) -> None:
        with self._lock:
            if running:
                self._runs.add(run)
            else:
                self._runs.discard(run)

    def close(self, cancel: bool) -> None:
        """Close every set; fail the calls still running. Idempotent.

        ``cancel``: do not wait for running items (garbage collection,
        interpreter exit, an exception leaving the ``with`` block).
        """
        with self._lock:
            self.closed = True
            runs = list(self._runs)
            sets = [w for idle in self._idle.values() for w in idle] + list(self._lent)
            self._idle.clear()
            self._lent.clear()
            self._runs.clear()
        for run in runs:  # else a call left running (an unread imap) would never end
            run.engine.fail_run(BrokenBackend("the shoal.Pool was closed during this call"))
        for workers in sets:
            workers.close(cancel)


class _Lease:
    """The warm workers one call uses: its run's ``WarmLookup``."""

    def __init__(self, sets: _Sets) -> None:
        self._sets = sets
        self._taken: dict[str, WarmWorkers | None] = {}
        self._run: Run | None = None
        self._ended = False

    def __call__(self, kind: str) -> WarmWorkers | None:
        if kind not in self._taken:
            self._taken[kind] = self._sets.take(kind)
        return self._taken[kind]

    def begin(self, run: Run) -> None:
        self._run = run
        self._sets.watch(run, True)

    def end(self, broken: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if self._run is not None:
            self._sets.watch(self._run, False)
        self._sets.give_back([w for w in self._taken.values() if w is not None], broken)


class _LeasedIterator(Iterator[T]):
    """``Pool.imap``'s iterator: gives its workers back when exhausted, closed
    or garbage-collected (even never started)."""

    def __init__(self, it: Iterator[T], lease: _Lease) -> None:
        self._it = it
        self._lease = lease

    def __next__(self) -> T:
        try:
            return next(self._it)
        except StopIteration:
            self._lease.end()
            raise
        except BrokenBackend:
            self._lease.end(broken=True)
            raise
        except BaseException:
            self._lease.end()
            raise

    def close(self) -> None:
        """Stop the run now; its workers go back to the pool."""
        close = getattr(self._it, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._lease.end()

    def __del__(self) -> None:
        self.close()


class Pool:
    """Workers kept between calls: ``with shoal.Pool(...) as pool: pool.map(...)``.

    Args:
        backend: the workers' backend. "auto" (default) chooses per call and
            keeps the workers of each kind it has used; a call may then name
            the kind itself (``pool.map(f, xs, backend="threads")``).
        workers: workers per set (the backend's default when None).
        initializer: run once per worker of the pool (not once per call),
            with ``initargs``.
        max_items_per_worker: a worker is replaced after this many items,
            counted across calls.
        address, backend_options: the Dask scheduler, or an open client.
        **defaults: any other option (``retries``, ``timeout``, ``on_error``,
            ...) as the default of every call; a call's own options override it.

    Which kinds keep their workers between calls: threads (threads park
    between calls; the initializer runs once per thread) and sequential (the
    initializer runs once per calling thread); processes and dask once their
    warm workers are registered (``shoal._backends.warm_class``); until then
    such a call starts and stops its own workers, as ``shoal.map`` does. On
    asyncio the workers are coroutines on the loop of each call (which may
    differ from call to call), so a pool keeps only its settings there: each
    call starts its coroutines and runs the initializer once, on its loop,
    since what the initializer makes (a session) is bound to that loop.

    Raises:
        InvalidOptionError: an unknown option or a bad value (at once, not at
            the first call).
    """

    def __init__(
        self,
        backend: BackendName = "auto",
        *,
        workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_items_per_worker: int | None = None,
        address: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        **defaults: Unpack[PoolDefaults],
    ) -> None:
        self._own: dict[str, Any] = {
            "backend": backend, "workers": workers, "initializer": initializer,
            "initargs": tuple(initargs), "max_items_per_worker": max_items_per_worker,
            "address": address, "backend_options": dict(backend_options or {}),
        }
        self._defaults: dict[str, Any] = dict(defaults)
        options = Options.from_kwargs("collect_errors", {**self._defaults, **self._own})
        if backend != "auto":
            planner.check(options, backend_class(backend).traits)
        self._sets = _Sets(options)
        self._finalizer = weakref.finalize(self, self._sets.close, True)

    # ------------------------------------------------------------ life
    @property
    def closed(self) -> bool:
        return self._sets.closed

    def close(self, *, cancel: bool = False) -> None:
        """Stop the pool's workers, leaving no thread or child process.

        ``cancel``: do not wait for items still running (a call still
        running fails with ``BrokenBackend``). Closing twice is harmless.
        """
        self._finalizer.detach()
        self._sets.close(cancel)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(cancel=exc_type is not None)  # Ctrl-C or an error: do not wait

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import asyncio

        await asyncio.to_thread(self.close, cancel=exc_type is not None)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<shoal.Pool backend={self._own['backend']!r} workers={self._own['workers']!r} " \
               f"{state}>"

    # ------------------------------------------------------------ calls
    def _options(self, call: Mapping[str, Any]) -> dict[str, Any]:
        """The pool's defaults, the call's options over them, the workers' options.

        Raises:
            InvalidOptionError: the call sets an option of the pool's workers.
        """
        own = self._own
        for name in call:
            if name == "backend" and own["backend"] == "auto":
                continue  # an auto pool may be told the kind: that kind's workers serve the call
            if name in WORKER_OPTIONS:
                raise InvalidOptionError(
                    f"{name} belongs to the pool's workers, which every call shares (this "
                    f"pool's: {name}={own[name]!r}); set it on shoal.Pool({name}=...), "
                    f"or use another pool or shoal.map for this call"
                    + ("; only a pool made with backend='auto' takes backend= per call"
                       if name == "backend" else ""))
        return {**self._defaults, **own, **call}

    def _lease(self) -> _Lease:
        if self._sets.closed:
            raise BrokenBackend(_CLOSED)
        return _Lease(self._sets)

    def _start(self, lease: _Lease, fn: Callable[[Any], Any], items: Iterable[Any],
               on_error: OnError, options: Mapping[str, Any]) -> Run:
        try:
            run = make_run(fn, items, on_error, self._options(options), warm=lease)
        except BaseException:
            lease.end()
            raise
        lease.begin(run)
        return run

    def _call(self, consume: Callable[[Run], T], fn: Callable[[Any], Any], items: Iterable[Any],
              on_error: OnError, options: Mapping[str, Any]) -> T:
        lease = self._lease()
        run = self._start(lease, fn, items, on_error, options)
        try:
            result = consume(run)
        except BrokenBackend:
            lease.end(broken=True)
            raise
        except BaseException:
            lease.end()
            raise
        lease.end()
        return result

    async def _acall(self, consume: Callable[[Run], Coroutine[Any, Any, T]],
                     fn: Callable[[Any], Any], items: Iterable[Any], on_error: OnError,
                     options: Mapping[str, Any]) -> T:
        lease = self._lease()
        run = self._start(lease, fn, items, on_error, options)
        try:
            result = await consume(run)
        except BrokenBackend:
            lease.end(broken=True)
            raise
        except BaseException:
            lease.end()
            raise
        lease.end()
        return result

    @overload
    def map(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
            on_error: Literal["collect_errors"],
            **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    def map(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
            on_error: NotCollect = ..., **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @overload
    def map(self, fn: Callable[[A], T], items: Iterable[A], *,
            on_error: Literal["collect_errors"],
            **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    def map(self, fn: Callable[[A], T], items: Iterable[A], *, on_error: NotCollect = ...,
            **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @documented(on_error="all_or_nothing", without=WORKER_OPTIONS)
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> list[Any]:
        """``shoal.map`` on the pool's workers."""
        return self._call(map_values, fn, items, "all_or_nothing", options)

    @overload
    def starmap(self, fn: Callable[..., Coroutine[Any, Any, T]],
                items: Iterable[Iterable[Any]], *, on_error: Literal["collect_errors"],
                **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    def starmap(self, fn: Callable[..., Coroutine[Any, Any, T]],
                items: Iterable[Iterable[Any]], *, on_error: NotCollect = ...,
                **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @overload
    def starmap(self, fn: Callable[..., T], items: Iterable[Iterable[Any]], *,
                on_error: Literal["collect_errors"],
                **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    def starmap(self, fn: Callable[..., T], items: Iterable[Iterable[Any]], *,
                on_error: NotCollect = ..., **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @documented(on_error="all_or_nothing", without=WORKER_OPTIONS)
    def starmap(self, fn: Callable[..., Any], items: Iterable[Iterable[Any]],
                **options: Any) -> list[Any]:
        """``shoal.starmap`` on the pool's workers: ``fn(*args)`` per tuple."""
        return self._call(map_values, spread(fn), items, "all_or_nothing", options)

    @overload
    def run(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
            **options: Unpack[PoolRunOptions]) -> BatchReport[T]: ...
    @overload
    def run(self, fn: Callable[[A], T], items: Iterable[A],
            **options: Unpack[PoolRunOptions]) -> BatchReport[T]: ...
    @documented(on_error="collect_errors", without=WORKER_OPTIONS)
    def run(self, fn: Callable[[Any], Any], items: Iterable[Any],
            **options: Any) -> BatchReport[Any]:
        """``shoal.run`` on the pool's workers."""
        return self._call(report, fn, items, "collect_errors", options)

    @overload
    def imap(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
             ordered: bool = ...,
             **options: Unpack[PoolStreamOptions]) -> Iterator[ItemResult[T]]: ...
    @overload
    def imap(self, fn: Callable[[A], T], items: Iterable[A], ordered: bool = ...,
             **options: Unpack[PoolStreamOptions]) -> Iterator[ItemResult[T]]: ...
    @documented(on_error="collect_errors", without=WORKER_OPTIONS)
    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
             **options: Any) -> Iterator[ItemResult[Any]]:
        """``shoal.imap`` on the pool's workers; they are the call's until the
        iterator is exhausted or closed."""
        lease = self._lease()
        run = self._start(lease, fn, items, "collect_errors", {**options, "ordered": ordered})
        return _LeasedIterator(stream(run), lease)

    @overload
    async def amap(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
                   on_error: Literal["collect_errors"],
                   **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    async def amap(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
                   on_error: NotCollect = ...,
                   **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @overload
    async def amap(self, fn: Callable[[A], T], items: Iterable[A], *,
                   on_error: Literal["collect_errors"],
                   **options: Unpack[PoolMapOptions]) -> list[T | BaseException]: ...
    @overload
    async def amap(self, fn: Callable[[A], T], items: Iterable[A], *,
                   on_error: NotCollect = ..., **options: Unpack[PoolMapOptions]) -> list[T]: ...
    @documented(on_error="all_or_nothing", without=WORKER_OPTIONS)
    async def amap(self, fn: Callable[[Any], Any], items: Iterable[Any],
                   **options: Any) -> list[Any]:
        """``shoal.amap`` on the pool's workers."""
        return await self._acall(amap_values, fn, items, "all_or_nothing", options)

    @overload
    async def arun_batch(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
                         **options: Unpack[PoolRunOptions]) -> BatchReport[T]: ...
    @overload
    async def arun_batch(self, fn: Callable[[A], T], items: Iterable[A],
                         **options: Unpack[PoolRunOptions]) -> BatchReport[T]: ...
    @documented(on_error="collect_errors", without=WORKER_OPTIONS)
    async def arun_batch(self, fn: Callable[[Any], Any], items: Iterable[Any],
                         **options: Any) -> BatchReport[Any]:
        """``shoal.arun_batch`` on the pool's workers."""
        return await self._acall(areport, fn, items, "collect_errors", options)

    @overload
    def aimap(self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
              ordered: bool = ..., **options: Unpack[PoolStreamOptions]
              ) -> AsyncGenerator[ItemResult[T], None]: ...
    @overload
    def aimap(self, fn: Callable[[A], T], items: Iterable[A], ordered: bool = ...,
              **options: Unpack[PoolStreamOptions]) -> AsyncGenerator[ItemResult[T], None]: ...
    @documented(on_error="collect_errors", without=WORKER_OPTIONS)
    async def aimap(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
                    **options: Any) -> AsyncGenerator[ItemResult[Any], None]:
        """``shoal.aimap`` on the pool's workers; they are the call's until the
        generator is exhausted or closed."""
        lease = self._lease()
        run = self._start(lease, fn, items, "collect_errors", {**options, "ordered": ordered})
        inner = astream(run)
        broken = False
        try:
            async for r in inner:
                yield r
        except BrokenBackend:
            broken = True
            raise
        finally:
            await inner.aclose()
            lease.end(broken)
