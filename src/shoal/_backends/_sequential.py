"""The sequential backend: items run one after another on the caller's thread."""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend, InlineBackend, Traits, WarmWorkers
from shoal._core.calling import close_thread_loop, run_chunk, run_chunk_async, sync_caller
from shoal._core.engine import Wait, Work
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from shoal._core.engine import Engine
    from shoal._core.options import Options


class SequentialBackend(InlineBackend):
    """No pool at all; the lowest overhead, and the baseline of every benchmark."""

    traits = Traits(
        "sequential", default_workers=lambda: 1, inline=True, recycles_workers=False,
        # Nothing crosses to a worker: a chunk only saves the engine's
        # per-task bookkeeping, so 2 ms of work is plenty.
        chunking=ChunkParams(target_seconds=0.002, min_seconds=0.002, growth=64.0,
                             chunks_per_worker=1),
    )
    worker_label = "main"

    def start(self, engine: Engine) -> None:
        self._call = sync_caller(self.fn)
        self._stop_on_error = self.options.on_error == "all_or_nothing"
        super().start(engine)

    def step(self, engine: Engine) -> Wait | None:
        got = engine.acquire()
        if isinstance(got, Work):
            try:
                outcome = run_chunk(self._call, got.task.items, self.worker_label,
                                    stop_on_error=self._stop_on_error)
            except KeyboardInterrupt as interrupt:
                partial = getattr(interrupt, "shoal_partial", None)
                if partial is not None and partial.values:  # what finished before Ctrl-C
                    engine.complete(got.task, partial)
                raise
            engine.complete(got.task, outcome)
            return None
        return got if isinstance(got, Wait) else None

    def shutdown(self, cancel: bool) -> None:
        close_thread_loop()  # made only if an async fn ran through step()

    async def astep(self, engine: Engine) -> Wait | None:
        got = engine.acquire()
        if isinstance(got, Work):
            engine.complete(got.task, await run_chunk_async(
                self.fn, got.task.items, self.worker_label, stop_on_error=self._stop_on_error))
            return None
        return got if isinstance(got, Wait) else None


class SequentialWorkers(WarmWorkers):
    """A pool's sequential "worker" is the thread that calls it: nothing runs
    between calls, so all this keeps is where the initializer has run (once
    per calling thread, for the pool's life, rather than once per run)."""

    traits = SequentialBackend.traits

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._lock = threading.Lock()  # guards _ready
        self._ready: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def serve(self, fn: Callable[[Any], Any], options: Options, workers: int) -> Backend:
        return _Served(fn, dataclasses.replace(options, initializer=None), workers, self)

    def initialize_here(self) -> None:
        """Run the pool's initializer on this thread, the first time only.

        Raises:
            BaseException: whatever the initializer raised (it runs again next time).
        """
        me = threading.current_thread()
        init = self.options.initializer
        with self._lock:
            if init is None or me in self._ready:
                return
        init(*self.options.initargs)
        with self._lock:
            self._ready.add(me)

    def close(self, cancel: bool) -> None:
        return None  # no thread of its own


class _Served(SequentialBackend):
    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int,
                 warm: SequentialWorkers) -> None:
        super().__init__(fn, options, workers)
        self._warm = warm

    def start(self, engine: Engine) -> None:
        self._warm.initialize_here()
        super().start(engine)
