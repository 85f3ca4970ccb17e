"""The sequential backend: items run one after another on the caller's thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal._backends._base import InlineBackend, Traits
from shoal._core.calling import close_thread_loop, run_chunk, run_chunk_async, sync_caller
from shoal._core.engine import Wait, Work
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from shoal._core.engine import Engine


class SequentialBackend(InlineBackend):
    """No pool at all; the lowest overhead, and the baseline of every benchmark."""

    traits = Traits(
        "sequential", default_workers=lambda: 1, inline=True,
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
            engine.complete(got.task, run_chunk(self._call, got.task.items, self.worker_label,
                                                stop_on_error=self._stop_on_error))
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
