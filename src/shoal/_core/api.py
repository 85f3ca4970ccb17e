"""The public calls: ``map``, ``run``, ``imap`` and their async twins.

Each is a thin loop over ``Run.segments`` / ``Run.asegments``; they differ only
in what they hand back. ``backend="asyncio"`` needs an event loop, so from
synchronous code it runs on one (``arun``), or on a helper thread's loop for
the streaming ``imap``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from shoal._core.bridge import arun, iterate_in_thread
from shoal._core.engine import Segment
from shoal._core.options import OnError, Options
from shoal._core.results import BatchReport, ItemResult
from shoal._core.run import Run

T = TypeVar("T")


def _needs_loop(run: Run) -> bool:
    return run.backend is not None and run.backend.runs_on_loop


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
    run = Run(fn, items, Options.from_kwargs("all_or_nothing", options))
    if _needs_loop(run):
        return arun(_amap(run))
    out: list[Any] = []
    with run.guard():
        for segs in run.segments():
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
    batch = Run(fn, items, Options.from_kwargs("collect_errors", options))
    if _needs_loop(batch):
        return arun(_arun_report(batch))
    with batch.guard():
        for segs in batch.segments():
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
    batch = Run(fn, items, Options.from_kwargs("collect_errors", {**options, "ordered": ordered}))
    if _needs_loop(batch):
        return _imap_on_loop(batch)
    return _imap(batch)


def _imap(batch: Run) -> Iterator[ItemResult[Any]]:
    skip = batch.opts.on_error == "skip_failed"
    with batch.guard():
        for segs in batch.segments():
            for r in batch.results(segs):
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
    return await _amap(Run(fn, items, Options.from_kwargs("all_or_nothing", options)))


async def arun_batch(
    fn: Callable[[Any], Any], items: Iterable[Any], **options: Any
) -> BatchReport[Any]:
    """``run`` for async code: ``report = await shoal.arun_batch(fn, items)``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    return await _arun_report(Run(fn, items, Options.from_kwargs("collect_errors", options)))


async def aimap(
    fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True, **options: Any
) -> AsyncGenerator[ItemResult[Any], None]:
    """``imap`` for async code: ``async for r in shoal.aimap(fn, items): ...``.

    Raises:
        InvalidOptionError: an unknown option or a bad value.
        InvalidItemsError: ``items`` is not iterable.
    """
    batch = Run(fn, items, Options.from_kwargs("collect_errors", {**options, "ordered": ordered}))
    inner = _aimap(batch)
    try:
        async for r in inner:
            yield r
    finally:
        await inner.aclose()  # closing us stops the run now, not at garbage collection


async def _amap(batch: Run) -> list[Any]:
    out: list[Any] = []
    with batch.aguard():
        async for segs in batch.asegments():
            batch.deliver(segs, keep=False)
            _values(segs, batch.opts.on_error, out)
    batch.close(None)
    return out


async def _arun_report(batch: Run) -> BatchReport[Any]:
    with batch.aguard():
        async for segs in batch.asegments():
            batch.deliver(segs, keep=True)
    report = batch.report()
    batch.close(report)
    return report


async def _aimap(batch: Run) -> AsyncGenerator[ItemResult[Any], None]:
    skip = batch.opts.on_error == "skip_failed"
    segments = batch.asegments()
    try:
        async for segs in segments:
            for r in batch.results(segs):
                if r.ok or not skip:
                    yield r
    except BaseException:
        batch.close(None)
        raise
    finally:
        await segments.aclose()
    batch.close(None)


__all__ = ["OnError", "aimap", "amap", "arun", "arun_batch", "imap", "map", "run"]
