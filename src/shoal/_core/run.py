"""One run: planning (backend, chunking, hooks) and the two consumer loops.

The consumer loop is the only place that waits for results and the only place
that enforces timeouts: it sleeps until results arrive or the earliest deadline
passes, then asks the engine to ``expire`` and the backend to ``abandon``.
It is written once (``Run._steps``, which says what to do next) and carried
out twice: blocking (``segments``) and awaiting (``asegments``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any

from shoal._backends import Backend, InlineBackend, backend_class
from shoal._backends._base import cpu_count, default_window
from shoal._core.calling import is_async_callable
from shoal._core.engine import Engine, Segment
from shoal._core.errors import BatchInterrupted, InvalidItemsError, InvalidOptionError, NotPicklable
from shoal._core.options import Options
from shoal._core.results import BatchReport, ItemResult
from shoal._policies.auto import PROBE_MAX_ITEMS, PROBE_MAX_SECONDS, ProbeSample, choose_backend
from shoal._sinks.base import ResultStore, RunInfo, RunObserver

#: chunk size of the inline backend once auto has chosen it for tiny items
TINY_CHUNK = 4096


def _iterate(items: Iterable[Any]) -> Iterator[Any]:
    if isinstance(items, (str, bytes)):
        raise InvalidItemsError(
            f"items is a {type(items).__name__}; shoal would run fn on each character. "
            "Pass a list of strings (e.g. [text]) or text.splitlines()"
        )
    try:
        return iter(items)
    except TypeError:
        hint = " (an async iterable: use shoal.aimap/amap)" if hasattr(items, "__aiter__") else ""
        raise InvalidItemsError(
            f"items must be iterable, got {type(items).__name__}{hint}; "
            "pass a list, a generator or any other iterable"
        ) from None


class Run:
    """Planning and consumption of one call to map/run/imap/amap/aimap."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any], opts: Options) -> None:
        if not callable(fn):
            raise InvalidOptionError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.opts = opts
        self.started = time.perf_counter()
        self.delivered: list[ItemResult[Any]] = []  # kept only when a report is wanted
        source = _iterate(items)
        self.total: int | None = opts.total
        if self.total is None and hasattr(items, "__len__"):
            self.total = len(items)  # type: ignore[arg-type]
        self.is_async = is_async_callable(fn)
        name = opts.backend
        self.reason = "chosen by the caller"
        if name == "auto":
            if self.is_async:
                name, self.reason = choose_backend(True, None, cpu_count())
            else:
                name = ""  # decided by the probe, on the consumer side
        elif name == "sequential" and opts.timeout is not None:
            name = "threads"
            self.reason = "sequential with a timeout: one worker thread, so a hung item can be left"
            opts = dataclasses.replace(opts, workers=1)
            self.opts = opts
        self.backend: Backend | None = self._make_backend(name) if name else None
        self.running: Backend | None = None  # the backend once its start() has begun
        chunk = self._chunk_size()
        max_in_flight = opts.max_in_flight or (
            self.backend.default_max_in_flight(chunk) if self.backend else default_window(1, chunk))
        self.store: ResultStore | None = _open_store(opts.checkpoint, fn)
        self.engine = Engine(items if type(items) is range else source, opts,
                             chunk_size=chunk, max_in_flight=max_in_flight, store=self.store)
        self.observers: list[RunObserver] = []
        if opts.progress:
            from shoal._sinks.progress import make_progress

            obs = make_progress(opts.progress, opts.total)
            if obs is not None:
                self.observers.append(obs)

    # --------------------------------------------------------------- planning
    def _make_backend(self, name: str) -> Backend:
        cls = backend_class(name)
        workers = self.opts.workers or cls.default_workers()
        return cls(self.fn, self.opts, workers)

    def _workers(self) -> int:
        return self.backend.workers if self.backend is not None else 1

    def _chunk_size(self) -> int:
        if self.opts.chunk_size != "auto":
            if self.opts.timeout is not None and self.opts.chunk_size > 1 and (
                self.backend is None or not self.backend.name == "processes"
            ):
                raise InvalidOptionError(
                    "timeout is per item and needs chunk_size=1 on this backend; "
                    'drop chunk_size or use chunk_size="auto"'
                )
            return self.opts.chunk_size
        if self.backend is None:
            return 1  # the probe measures item by item
        return self.backend.auto_chunk_size(self.total)

    @property
    def backend_name(self) -> str:
        return self.backend.name if self.backend is not None else "auto"

    def _start_backend(self, backend: Backend) -> None:
        opts = self.opts
        target = backend.adaptive_chunk_seconds
        if target is not None and opts.chunk_size == "auto" and opts.timeout is None \
                and opts.rate is None:
            self.engine.adapt_chunks(target, backend.workers)
        self.running = backend  # before start(): a start cut short is shut down too
        backend.start(self.engine)

    def _start_observers(self) -> None:
        info = RunInfo(self.total, self.backend_name, self._workers())
        for obs in self.observers:
            obs.on_start(info)

    # ------------------------------------------------------------- auto probe
    def _probe(self) -> None:
        """Run first items inline, measure, and choose the backend."""
        probe = backend_class("sequential")(self.fn, self.opts, 1)
        assert isinstance(probe, InlineBackend)
        probe.start(self.engine)
        engine = self.engine
        wall = cpu = 0.0
        while (engine.items_run < PROBE_MAX_ITEMS and wall < PROBE_MAX_SECONDS
               and engine.probe_can_continue()):
            w0, c0 = time.perf_counter(), time.thread_time()
            probe.step(engine)
            wall += time.perf_counter() - w0
            cpu += time.thread_time() - c0
        n = engine.items_run
        exhausted = self.engine.exhausted
        remaining = None if self.total is None else max(0, self.total - n)
        sample = ProbeSample(n, wall, cpu, exhausted, remaining)
        available = importlib.util.find_spec("shoal._backends._processes.pool") is not None
        name, self.reason = choose_backend(False, sample, cpu_count(), available)
        self.reason = f"auto: {self.reason}"
        try:
            self.backend = self._make_backend(name)
        except NotPicklable as exc:  # CPU-bound, but cannot cross to a process
            self.reason += f"; but fn cannot be pickled ({exc}), so threads"
            self.backend = self._make_backend("threads")
        if self.opts.chunk_size != "auto":
            chunk = self.opts.chunk_size
        elif name == "sequential":
            chunk = TINY_CHUNK
        else:
            chunk = self.backend.auto_chunk_size(None if self.total is None else self.total - n)
        self.engine.set_chunk_size(chunk, self.backend.default_max_in_flight(chunk))

    # ------------------------------------------------------------ delivery
    def deliver(self, segs: list[Segment], keep: bool) -> list[ItemResult[Any]] | None:
        """Hand settled segments to the checkpoint and observers."""
        if not (keep or self.store is not None or self.observers):
            return None
        results = [r for s in segs for r in s.item_results()]
        if self.store is not None:
            fresh = [r for r in results if not r.restored]
            if fresh:
                self.store.record(fresh)
        for obs in self.observers:
            obs.on_results(results)
        if keep:
            self.delivered.extend(results)
        return results

    def results(self, segs: list[Segment]) -> list[ItemResult[Any]]:
        """``deliver`` for a consumer that wants the ItemResults themselves."""
        return self.deliver(segs, keep=False) or [r for s in segs for r in s.item_results()]

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around a synchronous consumer: Ctrl-C becomes ``BatchInterrupted``
        carrying what finished; any other error closes the observers and the
        checkpoint (committing what was recorded) before it propagates.

        Raises:
            BatchInterrupted: on KeyboardInterrupt.
        """
        try:
            yield
        except KeyboardInterrupt:
            raise self.interrupted() from None
        except BaseException:
            self.close(None)
            raise

    @contextlib.contextmanager
    def aguard(self) -> Iterator[None]:
        """``guard`` around a coroutine consumer: on Ctrl-C or cancellation the
        observers get the partial report; on any other error they are closed
        (and the checkpoint committed) before it propagates."""
        import asyncio  # loaded already: the consumer runs on a loop

        try:
            yield
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.close(self.report(interrupted=True))
            raise
        except BaseException:
            self.close(None)
            raise

    def check(self) -> None:
        """Raise the run's error, if it has one (all_or_nothing, broken input)."""
        eng = self.engine
        error = eng.fatal or eng.failure
        if error is not None:
            if eng.failure is error and hasattr(error, "add_note"):
                notes = getattr(error, "__notes__", [])
                note = "shoal: on_error='all_or_nothing' stopped the batch at this failure"
                if note not in notes:
                    error.add_note(note)
            raise error

    def report(self, interrupted: bool = False) -> BatchReport[Any]:
        results = self.delivered
        if interrupted:
            results = results + [r for s in self.engine.undelivered() for r in s.item_results()]
            results.sort(key=lambda r: r.index)
        return BatchReport(results, self.backend_name, self.reason, self._workers(),
                           time.perf_counter() - self.started, interrupted)

    def close(self, report: BatchReport[Any] | None) -> None:
        try:
            for obs in self.observers:
                obs.on_finish(report)
        finally:
            if self.store is not None:
                self.store.close()

    def interrupted(self) -> BatchInterrupted:
        report = self.report(interrupted=True)
        self.close(report)
        return BatchInterrupted(report)

    # ------------------------------------------------------- consumer loop
    def _begin(self) -> Backend:
        """Choose the backend (probing if auto), start observers and workers."""
        if self.backend is None:
            self._probe()
        backend = self.backend
        assert backend is not None
        self._start_observers()
        self._start_backend(backend)
        return backend

    def _steps(self, backend: Backend, clear: Callable[[], None]) -> Iterator[_Step]:
        """The consumer loop, written once for both consumers: it says what
        to do next, and ``segments``/``asegments`` do it their own way.

        ``clear`` resets the wake-up signal before each look at the engine,
        so a result settled after the look still wakes the next wait.
        """
        engine = self.engine
        inline = backend if isinstance(backend, InlineBackend) else None
        while True:
            clear()
            segs = engine.take()
            if segs:
                yield _Deliver(segs)
                continue
            self.check()
            if engine.finished():
                return
            if inline is not None:
                yield _RunInline(inline)
                continue
            deadline = engine.next_deadline()
            yield _Wait(None if deadline is None else max(0.0, deadline - engine.clock()))
            if deadline is not None:
                for task in engine.expire():
                    backend.abandon(task)

    def segments(self) -> Iterator[list[Segment]]:
        """Settled segments as they become deliverable; blocks in between."""
        engine = self.engine
        wake = threading.Event()
        engine.on_settled = wake.set
        clean = False
        try:
            backend = self._begin()
            for step in self._steps(backend, wake.clear):
                if isinstance(step, _Deliver):
                    yield step.segments
                elif isinstance(step, _RunInline):
                    step.backend.step(engine)
                else:
                    wake.wait(step.timeout)
            clean = True
        finally:
            if not clean:
                engine.stop()
            if self.running is not None:  # even when Ctrl-C came while it started
                self.running.shutdown(cancel=not clean)

    async def asegments(self) -> AsyncGenerator[list[Segment], None]:
        """``segments`` for a coroutine consumer; never blocks the loop."""
        import asyncio

        engine = self.engine
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        wake = asyncio.Event()
        pending = False

        def set_from_loop() -> None:
            nonlocal pending
            pending = False
            wake.set()

        def on_settled() -> None:
            nonlocal pending
            if threading.get_ident() == loop_thread:
                wake.set()
            elif not pending:  # coalesce wake-ups from worker threads
                pending = True
                loop.call_soon_threadsafe(set_from_loop)

        engine.on_settled = on_settled
        clean = False
        try:
            backend = self._begin()
            for step in self._steps(backend, wake.clear):
                if isinstance(step, _Deliver):
                    yield step.segments
                elif isinstance(step, _RunInline):
                    await step.backend.astep(engine)
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), step.timeout)
            clean = True
        finally:
            if not clean:
                engine.stop()
            started = self.running  # even when cancelled while it started
            if started is not None and started.runs_on_loop:
                started.shutdown(cancel=not clean)
                await started.aclose()  # type: ignore[attr-defined]
            elif started is not None:
                await asyncio.shield(loop.run_in_executor(None, started.shutdown, not clean))


@dataclasses.dataclass(slots=True)
class _Deliver:
    segments: list[Segment]


@dataclasses.dataclass(slots=True)
class _RunInline:
    backend: InlineBackend


@dataclasses.dataclass(slots=True)
class _Wait:
    timeout: float | None  # None: until woken


_Step = _Deliver | _RunInline | _Wait


def _open_store(spec: Any, fn: Callable[[Any], Any]) -> ResultStore | None:
    if spec is None or spec is False:
        return None
    if isinstance(spec, ResultStore):
        return spec
    from shoal._sinks.checkpoint import open_checkpoint

    return open_checkpoint(spec, fn)
