"""The sequential backend: items run one after another on the caller's thread."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from shoal._backends._base import InlineBackend
from shoal._core.calling import close_thread_loop, run_chunk, run_chunk_async, sync_caller

if TYPE_CHECKING:
    from shoal._core.engine import Engine


class SequentialBackend(InlineBackend):
    """No pool at all; the lowest overhead, and the baseline of every benchmark."""

    name = "sequential"
    adaptive_chunk_seconds = 0.002
    worker_label = "main"

    def start(self, engine: Engine) -> None:
        self._call = sync_caller(self.fn)
        super().start(engine)

    def step(self, engine: Engine) -> None:
        got = engine.acquire()
        if got is None:
            return
        if isinstance(got, float):
            _check_finite(got)
            time.sleep(got)
            return
        engine.complete(got, run_chunk(self._call, got.items, self.worker_label))

    def shutdown(self, cancel: bool) -> None:
        close_thread_loop()  # made only if an async fn ran through step()

    async def astep(self, engine: Engine) -> None:
        got = engine.acquire()
        if got is None:
            return
        if isinstance(got, float):
            import asyncio

            _check_finite(got)
            await asyncio.sleep(got)
            return
        engine.complete(got, await run_chunk_async(self.fn, got.items, self.worker_label))


def _check_finite(wait: float) -> None:
    # With no worker running, nothing else can free capacity: waiting for a
    # signal would wait forever. The engine never asks that of an inline
    # backend (its consumer takes everything before stepping again).
    if math.isinf(wait):
        raise RuntimeError("shoal internal error: inline backend told to wait for a signal")
