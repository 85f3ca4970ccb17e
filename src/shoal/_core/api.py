"""The public calls: ``map``, ``run``, ``imap``, ``starmap`` and their async twins.

Each public call builds a ``Run`` and hands it to one of the consumers below
(``map_values``, ``report``, ``stream``, and ``amap_values``, ``areport``,
``astream``), which a ``shoal.Pool`` reuses with runs of its own. They are
thin loops over ``consumer.segments`` / ``consumer.asegments`` and differ
only in what they hand back. ``backend="asyncio"`` needs an event loop, so
from synchronous code it runs on one (``arun``), or on a helper thread's loop
for the streaming ``imap``.

The overloads are for type checkers (the options as ``Unpack`` of the
``TypedDict``\\ s in ``signatures``; ``async def`` functions give their
awaited values; ``on_error="collect_errors"`` puts exceptions among the
values); ``documented`` gives each call its runtime signature and help.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from shoal._backends._base import WarmLookup
from shoal._core.arguments import spread
from shoal._core.bridge import arun, iterate_in_thread
from shoal._core.consumer import asegments, segments
from shoal._core.errors import BatchInterrupted
from shoal._core.options import OnError, Options
from shoal._core.results import BatchReport, ItemResult, Segment
from shoal._core.run import Run
from shoal._core.signatures import documented

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from shoal._core.signatures import MapOptions, RunOptions, StreamOptions

T = TypeVar("T")
A = TypeVar("A")
NotCollect = Literal["all_or_nothing", "skip_failed"]


def make_run(fn: Callable[[Any], Any], items: Iterable[Any], on_error: OnError,
             options: Mapping[str, Any], warm: WarmLookup | None = None) -> Run:
    """A run of ``fn`` over ``items``; ``on_error`` is the call's default.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    return Run(fn, items, Options.from_kwargs(on_error, options), options, warm=warm)


def _needs_loop(run: Run) -> bool:
    return run.backend.traits.runs_on_loop


def _values(segs: list[Segment], on_error: str, out: list[Any]) -> None:
    for seg in segs:
        if seg.results is None:
            out.extend(seg.values)
            continue
        for r in seg.results:
            if r.ok:
                out.append(r.value)
            elif on_error == "collect_errors":
                out.append(r.error)
            # skip_failed: dropped; all_or_nothing: Run.check() raises


@contextlib.contextmanager
def _guard(run: Run) -> Iterator[None]:
    """Around a consumer: Ctrl-C becomes ``BatchInterrupted`` carrying what
    finished; any other error closes the observers and the checkpoint
    (committing what was recorded) before it propagates.

    Raises:
        BatchInterrupted: on KeyboardInterrupt.
    """
    try:
        yield
    except KeyboardInterrupt:
        raise run.interrupted() from None
    except BaseException:
        run.close(None)
        raise


#: The partial report of a run whose coroutine consumer was cancelled
#: (``_aguard``), for the synchronous caller to raise (``_on_loop``): results
#: that finished but were not delivered can be taken from the engine once.
_cut_short: weakref.WeakKeyDictionary[Run, BatchInterrupted] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _aguard(run: Run) -> Iterator[None]:
    """``_guard`` for a coroutine consumer: cancellation (how a loop delivers
    Ctrl-C to a task) closes the observers with the partial report and
    propagates; the synchronous caller then raises ``BatchInterrupted`` with
    that report."""
    import asyncio  # loaded already: the consumer runs on a loop

    try:
        yield
    except (KeyboardInterrupt, asyncio.CancelledError):
        _cut_short[run] = run.interrupted()  # records what settled, builds the report, closes
        raise
    except BaseException:
        run.close(None)
        raise


def _on_loop(run: Run, coro: Any) -> Any:
    """Run a coroutine consumer from synchronous code; Ctrl-C is ``BatchInterrupted``.

    Raises:
        BatchInterrupted: on KeyboardInterrupt, with every result finished so far.
    """
    try:
        return arun(coro)
    except KeyboardInterrupt:
        raise (_cut_short.pop(run, None) or run.interrupted()) from None


# ----------------------------------------------------------------- consumers
# Each ends its run's use of the backend before it returns or raises (the
# segments generator is closed, not left to the garbage collector), so a
# pool may hand the same workers to its next run.
def map_values(run: Run) -> list[Any]:
    """The values of ``run`` in order (see ``map``).

    Raises:
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    if _needs_loop(run):
        return _on_loop(run, amap_values(run))  # type: ignore[no-any-return]
    out: list[Any] = []
    with _guard(run), contextlib.closing(segments(run)) as stream_:
        for segs in stream_:
            run.deliver(segs, keep=True)  # kept for BatchInterrupted.report
            _values(segs, run.opts.on_error, out)
    run.close(None)
    return out


def report(run: Run) -> BatchReport[Any]:
    """The ``BatchReport`` of ``run`` (see ``run``).

    Raises:
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    if _needs_loop(run):
        return _on_loop(run, areport(run))  # type: ignore[no-any-return]
    with _guard(run), contextlib.closing(segments(run)) as stream_:
        for segs in stream_:
            run.deliver(segs, keep=True)
    result = run.report()
    run.close(result)
    return result


def stream(run: Run) -> Iterator[ItemResult[Any]]:
    """``ItemResult``\\ s of ``run`` as they are delivered (see ``imap``)."""
    if _needs_loop(run):
        return _stream_on_loop(run)
    return _stream(run)


def _stream(run: Run) -> Iterator[ItemResult[Any]]:
    skip = run.opts.on_error == "skip_failed"
    with _guard(run), contextlib.closing(segments(run)) as stream_:
        for segs in stream_:
            for seg in segs:
                for r in seg.item_results():
                    if r.ok or not skip:
                        yield r
    run.close(None)


def _stream_on_loop(run: Run) -> Iterator[ItemResult[Any]]:
    try:
        yield from iterate_in_thread(lambda: astream(run))
    except KeyboardInterrupt:
        raise run.interrupted() from None


async def amap_values(run: Run) -> list[Any]:
    """``map_values`` on the running loop.

    Raises:
        BaseException: the first item's exception under all_or_nothing.
    """
    out: list[Any] = []
    with _aguard(run):
        async with contextlib.aclosing(asegments(run)) as stream_:
            async for segs in stream_:
                run.deliver(segs, keep=True)  # kept for BatchInterrupted.report
                _values(segs, run.opts.on_error, out)
    run.close(None)
    return out


async def areport(run: Run) -> BatchReport[Any]:
    """``report`` on the running loop.

    Raises:
        BaseException: the first item's exception under all_or_nothing.
    """
    with _aguard(run):
        async with contextlib.aclosing(asegments(run)) as stream_:
            async for segs in stream_:
                run.deliver(segs, keep=True)
    result = run.report()
    run.close(result)
    return result


async def astream(run: Run) -> AsyncGenerator[ItemResult[Any], None]:
    """``stream`` on the running loop. Whoever iterates it closes it
    (``aclose``) when done, so that the run stops then, not at garbage
    collection."""
    skip = run.opts.on_error == "skip_failed"
    segs_stream = asegments(run)
    try:
        async for segs in segs_stream:
            for seg in segs:
                for r in seg.item_results():
                    if r.ok or not skip:
                        yield r
    except BaseException:
        run.close(None)
        raise
    finally:
        await segs_stream.aclose()
    run.close(None)


# ------------------------------------------------------------------ map
@overload
def map(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
        on_error: Literal["collect_errors"],
        **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
def map(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
        on_error: NotCollect = ..., **options: Unpack[MapOptions]) -> list[T]: ...
@overload
def map(fn: Callable[[A], T], items: Iterable[A], *, on_error: Literal["collect_errors"],
        **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
def map(fn: Callable[[A], T], items: Iterable[A], *, on_error: NotCollect = ...,
        **options: Unpack[MapOptions]) -> list[T]: ...
@documented(on_error="all_or_nothing")
def map(fn: Callable[[Any], Any], items: Iterable[Any], *,
        on_error: OnError = "all_or_nothing", **options: Any) -> list[Any]:
    """Run ``fn`` on every item and return the values in input order.

    With the default ``on_error="all_or_nothing"`` the first failure stops the
    batch and is raised (its own exception, with a note); with
    ``"skip_failed"`` failed items are left out; with ``"collect_errors"`` a
    failed item's place holds its exception. An ``async def`` ``fn`` gives its
    awaited values.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    return map_values(make_run(fn, items, "all_or_nothing", {**options, "on_error": on_error}))


@overload
def starmap(fn: Callable[..., Coroutine[Any, Any, T]], items: Iterable[Iterable[Any]], *,
            on_error: Literal["collect_errors"],
            **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
def starmap(fn: Callable[..., Coroutine[Any, Any, T]], items: Iterable[Iterable[Any]], *,
            on_error: NotCollect = ..., **options: Unpack[MapOptions]) -> list[T]: ...
@overload
def starmap(fn: Callable[..., T], items: Iterable[Iterable[Any]], *,
            on_error: Literal["collect_errors"],
            **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
def starmap(fn: Callable[..., T], items: Iterable[Iterable[Any]], *,
            on_error: NotCollect = ..., **options: Unpack[MapOptions]) -> list[T]: ...
@documented(on_error="all_or_nothing")
def starmap(fn: Callable[..., Any], items: Iterable[Iterable[Any]], *,
            on_error: OnError = "all_or_nothing", **options: Any) -> list[Any]:
    """``map`` for functions of several arguments: ``fn(*args)`` for each
    tuple ``args`` of ``items``, as ``itertools.starmap`` does. To combine
    several iterables, ``starmap(fn, zip(xs, ys))``. Each ``ItemResult.item``
    is the tuple.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing
            (a ``TypeError`` when an item is not a tuple of fn's arguments).
    """
    return map_values(make_run(spread(fn), items, "all_or_nothing",
                               {**options, "on_error": on_error}))


# ------------------------------------------------------------------ run
@overload
def run(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
        **options: Unpack[RunOptions]) -> BatchReport[T]: ...
@overload
def run(fn: Callable[[A], T], items: Iterable[A],
        **options: Unpack[RunOptions]) -> BatchReport[T]: ...
@documented(on_error="collect_errors")
def run(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> BatchReport[Any]:
    """Run ``fn`` on every item and return a ``BatchReport``.

    The default ``on_error`` is ``"collect_errors"``: every item gets an
    ``ItemResult`` and failures are in ``report.failures``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    return report(make_run(fn, items, "collect_errors", options))


@overload
def imap(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], ordered: bool = ...,
         **options: Unpack[StreamOptions]) -> Iterator[ItemResult[T]]: ...
@overload
def imap(fn: Callable[[A], T], items: Iterable[A], ordered: bool = ...,
         **options: Unpack[StreamOptions]) -> Iterator[ItemResult[T]]: ...
@documented(on_error="collect_errors")
def imap(fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
         **options: Any) -> Iterator[ItemResult[Any]]:
    """Stream ``ItemResult`` objects as items finish (input order by default).

    Items are pulled from ``items`` only as workers free up, so an endless
    generator streams in bounded memory. ``ordered=False`` yields in completion
    order. The default ``on_error`` is ``"collect_errors"``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds finished, unyielded results.
    """
    return stream(make_run(fn, items, "collect_errors", {**options, "ordered": ordered}))


# ------------------------------------------------------------ async twins
@overload
async def amap(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
               on_error: Literal["collect_errors"],
               **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
async def amap(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], *,
               on_error: NotCollect = ..., **options: Unpack[MapOptions]) -> list[T]: ...
@overload
async def amap(fn: Callable[[A], T], items: Iterable[A], *,
               on_error: Literal["collect_errors"],
               **options: Unpack[MapOptions]) -> list[T | BaseException]: ...
@overload
async def amap(fn: Callable[[A], T], items: Iterable[A], *, on_error: NotCollect = ...,
               **options: Unpack[MapOptions]) -> list[T]: ...
@documented(on_error="all_or_nothing")
async def amap(fn: Callable[[Any], Any], items: Iterable[Any], *,
               on_error: OnError = "all_or_nothing", **options: Any) -> list[Any]:
    """``map`` for async code: ``values = await shoal.amap(fn, items)``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BaseException: the first item's exception under all_or_nothing.
    """
    return await amap_values(make_run(fn, items, "all_or_nothing",
                                      {**options, "on_error": on_error}))


@overload
async def arun_batch(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A],
                     **options: Unpack[RunOptions]) -> BatchReport[T]: ...
@overload
async def arun_batch(fn: Callable[[A], T], items: Iterable[A],
                     **options: Unpack[RunOptions]) -> BatchReport[T]: ...
@documented(on_error="collect_errors")
async def arun_batch(fn: Callable[[Any], Any], items: Iterable[Any],
                     **options: Any) -> BatchReport[Any]:
    """``run`` for async code: ``report = await shoal.arun_batch(fn, items)``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    return await areport(make_run(fn, items, "collect_errors", options))


@overload
def aimap(fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterable[A], ordered: bool = ...,
          **options: Unpack[StreamOptions]) -> AsyncGenerator[ItemResult[T], None]: ...
@overload
def aimap(fn: Callable[[A], T], items: Iterable[A], ordered: bool = ...,
          **options: Unpack[StreamOptions]) -> AsyncGenerator[ItemResult[T], None]: ...
@documented(on_error="collect_errors")
async def aimap(fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
                **options: Any) -> AsyncGenerator[ItemResult[Any], None]:
    """``imap`` for async code: ``async for r in shoal.aimap(fn, items): ...``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    inner = astream(make_run(fn, items, "collect_errors", {**options, "ordered": ordered}))
    try:
        async for r in inner:
            yield r
    finally:
        await inner.aclose()  # closing us stops the run now, not at garbage collection


__all__ = ["OnError", "aimap", "amap", "arun", "arun_batch", "imap", "map", "run", "starmap"]
