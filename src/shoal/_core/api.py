"""The public calls: ``map``, ``run``, ``imap`` and their async twins.

Each is a thin loop over ``consumer.segments`` / ``consumer.asegments``; they
differ only in what they hand back. ``backend="asyncio"`` needs an event
loop, so from synchronous code it runs on one (``arun``), or on a helper
thread's loop for the streaming ``imap``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from shoal._core.bridge import arun, iterate_in_thread
from shoal._core.consumer import asegments, segments
from shoal._core.errors import BatchInterrupted
from shoal._core.options import OnError, Options
from shoal._core.results import BatchReport, ItemResult, Segment
from shoal._core.run import Run

T = TypeVar("T")


def _run(fn: Callable[[Any], Any], items: Iterable[Any], on_error: OnError,
         options: Mapping[str, Any]) -> Run:
    return Run(fn, items, Options.from_kwargs(on_error, options), options)


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


def map(fn: Callable[[Any], T], items: Iterable[Any], **options: Any) -> list[T]:
    """Run ``fn`` on every item and return the values in input order.

    With the default ``on_error="all_or_nothing"`` the first failure stops the
    batch and is raised (its own exception, with a note); with
    ``"skip_failed"`` failed items are left out; with ``"collect_errors"`` a
    failed item's place holds its exception. See ``Options`` for every option.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    run = _run(fn, items, "all_or_nothing", options)
    if _needs_loop(run):
        return _on_loop(run, _amap(run))  # type: ignore[no-any-return]
    out: list[Any] = []
    with _guard(run):
        for segs in segments(run):
            run.deliver(segs, keep=False)
            _values(segs, run.opts.on_error, out)
    run.close(None)
    return out


def run(fn: Callable[[Any], T], items: Iterable[Any], **options: Any) -> BatchReport[T]:
    """Run ``fn`` on every item and return a ``BatchReport``.

    The default ``on_error`` is ``"collect_errors"``: every item gets an
    ``ItemResult`` and failures are in ``report.failures``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds what finished.
        BaseException: the first item's exception under all_or_nothing.
    """
    batch = _run(fn, items, "collect_errors", options)
    if _needs_loop(batch):
        return _on_loop(batch, _arun_report(batch))  # type: ignore[no-any-return]
    with _guard(batch):
        for segs in segments(batch):
            batch.deliver(segs, keep=True)
    report = batch.report()
    batch.close(report)
    return report


def imap(
    fn: Callable[[Any], T], items: Iterable[Any], ordered: bool = True, **options: Any
) -> Iterator[ItemResult[T]]:
    """Stream ``ItemResult`` objects as items finish (input order by default).

    Items are pulled from ``items`` only as workers free up, so an endless
    generator streams in bounded memory. ``ordered=False`` yields in completion
    order. The default ``on_error`` is ``"collect_errors"``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BatchInterrupted: Ctrl-C; ``.report`` holds finished, unyielded results.
    """
    batch = _run(fn, items, "collect_errors", {**options, "ordered": ordered})
    if _needs_loop(batch):
        return _imap_on_loop(batch)
    return _imap(batch)


def _imap(batch: Run) -> Iterator[ItemResult[Any]]:
    skip = batch.opts.on_error == "skip_failed"
    with _guard(batch):
        for segs in segments(batch):
            for seg in segs:
                for r in seg.item_results():
                    if r.ok or not skip:
                        yield r
    batch.close(None)


def _imap_on_loop(batch: Run) -> Iterator[ItemResult[Any]]:
    try:
        yield from iterate_in_thread(lambda: _aimap(batch))
    except KeyboardInterrupt:
        raise batch.interrupted() from None


async def amap(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> list[Any]:
    """``map`` for async code: ``values = await shoal.amap(fn, items)``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
        BaseException: the first item's exception under all_or_nothing.
    """
    return await _amap(_run(fn, items, "all_or_nothing", options))


async def arun_batch(
    fn: Callable[[Any], Any], items: Iterable[Any], **options: Any
) -> BatchReport[Any]:
    """``run`` for async code: ``report = await shoal.arun_batch(fn, items)``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    return await _arun_report(_run(fn, items, "collect_errors", options))


async def aimap(
    fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True, **options: Any
) -> AsyncGenerator[ItemResult[Any], None]:
    """``imap`` for async code: ``async for r in shoal.aimap(fn, items): ...``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    batch = _run(fn, items, "collect_errors", {**options, "ordered": ordered})
    inner = _aimap(batch)
    try:
        async for r in inner:
            yield r
    finally:
        await inner.aclose()  # closing us stops the run now, not at garbage collection


async def _amap(batch: Run) -> list[Any]:
    out: list[Any] = []
    with _aguard(batch):
        async for segs in asegments(batch):
            batch.deliver(segs, keep=False)
            _values(segs, batch.opts.on_error, out)
    batch.close(None)
    return out


async def _arun_report(batch: Run) -> BatchReport[Any]:
    with _aguard(batch):
        async for segs in asegments(batch):
            batch.deliver(segs, keep=True)
    report = batch.report()
    batch.close(report)
    return report


async def _aimap(batch: Run) -> AsyncGenerator[ItemResult[Any], None]:
    skip = batch.opts.on_error == "skip_failed"
    stream = asegments(batch)
    try:
        async for segs in stream:
            for seg in segs:
                for r in seg.item_results():
                    if r.ok or not skip:
                        yield r
    except BaseException:
        batch.close(None)
        raise
    finally:
        await stream.aclose()
    batch.close(None)


__all__ = ["OnError", "aimap", "amap", "arun", "arun_batch", "imap", "map", "run"]
