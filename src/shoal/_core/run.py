"""One run: its engine, its backend, its sinks, and how it ends.

The decisions live elsewhere (``planner``: backend, chunks, window;
``probe``: what ``backend="auto"`` measures and chooses), and so do the loops
that consume results (``consumer``). A ``Run`` holds what one call to
map/run/imap/amap/aimap is made of and carries out the planner's decisions:
start a backend, switch from the probe to the chosen one, hand settled
results to the sinks, build the report, close.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal._backends import Backend, backend_class
from shoal._backends._base import WarmLookup, WarmWorkers
from shoal._core import planner
from shoal._core.calling import is_async_callable
from shoal._core.engine import Engine
from shoal._core.errors import (
    BatchInterrupted,
    InvalidItemsError,
    InvalidOptionError,
    add_note,
)
from shoal._core.options import Options
from shoal._core.probe import Probe
from shoal._core.results import BatchReport, Segment
from shoal._core.source import IterSource, SliceSource, Source
from shoal._sinks.base import ResultStore, RunInfo, RunObserver


def make_source(items: Iterable[Any] | Source, on_ready: Callable[[], None]) -> Source:
    """The input as a ``Source``.

    Raises:
        InvalidItemsError: ``items`` is a string or not iterable.
    """
    if isinstance(items, Source):
        return items  # made by the caller (shoal.Executor's queue of calls)
    if isinstance(items, (str, bytes)):
        raise InvalidItemsError(
            f"items is a {type(items).__name__}; shoal would run fn on each character. "
            "Pass a list of strings (e.g. [text]) or text.splitlines()"
        )
    if type(items) in (range, list, tuple):
        return SliceSource(items)  # type: ignore[arg-type]
    try:
        iter(items)
    except TypeError:
        hint = " (an async iterable: use shoal.aimap/amap)" if hasattr(items, "__aiter__") else ""
        raise InvalidItemsError(
            f"items must be iterable, got {type(items).__name__}{hint}; "
            "pass a list, a generator or any other iterable"
        ) from None
    return IterSource(items, on_ready)


class Run:
    """Everything one call is made of (see the module docstring)."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any] | Source, opts: Options,
                 settings: Mapping[str, Any] | None = None, warm: WarmLookup | None = None) -> None:
        if not callable(fn):
            raise InvalidOptionError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.warm = warm  # a shoal.Pool's workers, kept between runs
        self.warm_workers: WarmWorkers | None = None  # those serving self.backend
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.settings = dict(settings or {})
        self.delivered: list[Segment] = []  # kept only when a report is wanted
        self.taken: list[Segment] = []  # taken from the engine, not yet delivered
        self.closed = False
        source = self.source = make_source(items, lambda: self.engine.input_ready())
        self.total: int | None = opts.total
        if self.total is None and hasattr(items, "__len__"):
            self.total = len(items)  # type: ignore[arg-type]
        name, self.reason = opts.backend, "chosen by the caller"
        if name == "sequential" and opts.timeout is not None:
            name = "threads"
            self.reason = "sequential with a timeout: one worker thread, so a hung item can be left"
            opts = dataclasses.replace(opts, workers=1)
        elif name == "auto" and is_async_callable(fn):
            name = "asyncio"
            self.reason = "auto: fn is a coroutine function: run natively on asyncio"
        elif name == "auto" and opts.address is not None:
            name, self.reason = "dask", "auto: address= names a Dask scheduler"
        self.opts = opts
        self.probe: Probe | None = None
        if name == "auto":
            self.probe = Probe(fn, opts, self.total)
            name = self.probe.kind
        self.backend: Backend = self._make_backend(
            name, Probe.workers if self.probe is not None else None)
        if self.probe is not None:
            self.backend.measure_waits = True  # type: ignore[attr-defined]
        self.running: list[Backend] = []  # started (or starting): each is shut down at the end
        self.store: ResultStore | None = _open_store(opts.checkpoint, fn)
        self.observers: list[RunObserver] = []
        if opts.progress:
            from shoal._sinks.progress import make_progress

            obs = make_progress(opts.progress, opts.total)
            if obs is not None:
                self.observers.append(obs)
        # fn's last run on a pool's workers tells where chunk sizing starts
        pace = (self.warm_workers.pace(fn)
                if self.warm_workers is not None and self.probe is None else None)
        plan = self._plan(self.backend, self.total, pace)
        if self.probe is not None and opts.chunk_size == "auto":
            plan.chunks.fixed = plan.chunks.size = 1  # one item at a time: each one is timed
        self.engine = Engine(source, opts, chunks=plan.chunks, window=plan.window,
                             store=self.store, total=self.total,
                             track_settled=self.store is not None or bool(self.observers))
        if self.probe is not None:  # the first item alone, or the caller's first chunk
            self.engine.limit(max(self.probe.budget, plan.chunks.size))

    # --------------------------------------------------------------- planning
    def _make_backend(self, name: str, workers: int | None = None) -> Backend:
        cls = backend_class(name)
        planner.check(self.opts, cls.traits)
        # An inline backend's one worker is the caller: workers= cannot add any.
        n = 1 if cls.traits.inline else (
            workers or self.opts.workers or cls.traits.default_workers())
        warm = self.warm_workers = self.warm(name) if self.warm is not None else None
        return warm.serve(self.fn, self.opts, n) if warm is not None else cls(self.fn, self.opts, n)

    def _plan(self, backend: Backend, total: int | None, pace: float | None) -> planner.Plan:
        return planner.plan(self.opts, backend.traits, total, backend.workers, pace)

    @property
    def backend_name(self) -> str:
        return "auto" if self.probe is not None else self.backend.name

    def begin(self, wake_consumer: Callable[[], None]) -> None:
        """Start observers and the first backend (the probe's, under auto).

        ``wake_consumer`` wakes the consumer loop (from any thread).
        """
        self._wake_consumer = wake_consumer
        info = RunInfo(self.total, self.backend_name, self.backend.workers)
        for obs in self.observers:
            obs.on_start(info)
        self._start(self.backend)

    def _start(self, backend: Backend) -> None:
        self.engine.bind(backend.wake, self._wake_consumer)
        if backend.traits.dispatcher_reads_results:
            self.source.use_reader()
        self.running.append(backend)  # before start(): a start cut short is shut down too
        backend.start(self.engine)

    def choose(self) -> Backend | None:
        """``backend="auto"``: a phase of the probe is over; go on probing
        elsewhere, or plan the chosen backend.

        Returns the backend that must be shut down before the next one
        starts (the consumer does that, blocking or awaiting), else None.
        ``switch`` then starts the next one.
        """
        probe = self.probe
        assert probe is not None
        old = self.backend
        further = probe.go_on(self.engine, lambda name: self._make_backend(name, Probe.workers))
        if isinstance(further, Backend):  # the rest of the probe runs in a process
            self.backend = further
            return old
        if further is not None:
            old.wake(False)  # the same worker goes on: the engine allows it more items
            return None
        name, self.reason = probe.decide(self.engine)
        self.probe = None
        if name == old.name:  # same kind: keep its workers, allow more
            workers = self.opts.workers or old.traits.default_workers()
            old.workers = workers  # planned for; resize() below starts them
            self._replan(old)
            old.resize(workers)
            self._announce()
            return None
        try:
            self.backend = self._make_backend(name)
        except InvalidOptionError:
            raise
        except Exception as exc:  # e.g. NotPicklable: CPU-bound, but cannot cross to a process
            self.reason += f"; but {exc}, so threads"
            self.backend = self._make_backend("threads")
        self._announce()
        return old

    def _announce(self) -> None:
        """Tell the observers that can hear it (``on_backend``) which backend
        auto chose: ``on_start`` saw "auto" and the probe's one worker."""
        info = RunInfo(self.total, self.backend_name, self.backend.workers)
        for obs in self.observers:
            on_backend = getattr(obs, "on_backend", None)
            if on_backend is not None:
                on_backend(info)

    def end_probe(self) -> None:
        """The run ended during the auto probe: its backend ran everything."""
        assert self.probe is not None
        _, why = self.probe.decide(self.engine)
        self.probe = None
        self.reason = f"{why} (ran on the probe's {self.backend.name} worker)"
        self._announce()

    def switch(self) -> None:
        """Start the backend ``choose`` planned, once the previous one has stopped."""
        self.running = [b for b in self.running if b is self.backend]
        if self.probe is None:
            self._replan(self.backend)
        self._start(self.backend)

    def _replan(self, backend: Backend) -> None:
        total = None if self.total is None else max(0, self.total - self.engine.pulled)
        plan = self._plan(backend, total, self.engine.measured.per_item)
        self.engine.set_chunks(plan.chunks, plan.window)
        self.engine.limit(None)

    def abandon(self, task: Any) -> None:
        for backend in self.running:
            backend.abandon(task)

    # ------------------------------------------------------------ delivery
    def record_settled(self) -> None:
        """Hand what finished since the last call to the checkpoint and the
        observers, in the order it finished (whatever the delivery order)."""
        segs = self.engine.take_settled()
        if not segs:
            return
        results = [r for s in segs for r in s.item_results()]
        if self.store is not None:
            fresh = [r for r in results if not r.restored]
            if fresh:
                self.store.record(fresh)
        for obs in self.observers:
            obs.on_results(results)

    def deliver(self, segs: list[Segment], keep: bool) -> None:
        """Keep delivered results for the report, when one is wanted (as
        columns: the report makes ItemResults only when they are read)."""
        if keep:
            self.delivered.extend(segs)

    def check(self) -> None:
        """Raise the run's error now, if it has one (all_or_nothing, a broken backend)."""
        eng = self.engine
        error = eng.fatal or eng.failure
        if error is not None:
            if eng.failure is error:
                add_note(error, f"shoal: on_error='all_or_nothing' stopped the batch at this "
                                f"failure, of item {eng.failure_index}")
            raise error

    def check_source(self) -> None:
        """Raise the input's error, once everything that finished is delivered."""
        if self.engine.source_error is not None:
            raise self.engine.source_error

    # ---------------------------------------------------------------- ending
    def report(self, interrupted: bool = False) -> BatchReport[Any]:
        segments = self.delivered
        if interrupted:
            segments = sorted(segments + self.taken + self.engine.undelivered(),
                              key=lambda s: s.start)
            self.taken = []
        return BatchReport(None, self.backend_name, self.reason, self.backend.workers,
                           time.perf_counter() - self.started, interrupted,
                           started_at=self.started_at, settings=self.settings,
                           segments=segments)

    def close(self, report: BatchReport[Any] | None) -> None:
        """Finish the observers and make the checkpoint durable; once."""
        if self.closed:
            return
        self.closed = True
        pace = self.engine.measured.per_item
        if self.warm_workers is not None and self.probe is None and pace is not None:
            self.warm_workers.learn(self.fn, pace)
        try:
            self.record_settled()
            for obs in self.observers:
                obs.on_finish(report)
        finally:
            if self.store is not None:
                self.store.close()

    def interrupted(self) -> BatchInterrupted:
        """Ctrl-C: the partial report, as the exception to raise."""
        self.record_settled()
        report = self.report(interrupted=True)
        self.close(report)
        return BatchInterrupted(report)


def _open_store(spec: Any, fn: Callable[[Any], Any]) -> ResultStore | None:
    if spec is None or spec is False:
        return None
    if isinstance(spec, ResultStore):
        return spec
    from shoal._sinks.checkpoint import open_checkpoint

    return open_checkpoint(spec, fn)
