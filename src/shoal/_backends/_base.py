"""The backend interface: start workers, run units of work, abandon, shut down."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from shoal._core.options import Options

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_window(workers: int, chunk: int) -> int:
    """Items pulled and not yet delivered, by default: four chunks per worker, at least 64."""
    return max(64, 4 * workers * chunk)


class Backend(ABC):
    """Runs the engine's tasks on some kind of worker.

    Workers pull: each calls ``engine.acquire()`` when it is free, runs the
    task, and reports with ``engine.complete(task, outcome)``. Waiting for
    capacity (``acquire`` returned a number of seconds) is done in the
    backend's own way, woken by ``engine.on_capacity``.
    """

    name: ClassVar[str]
    #: workers are coroutines on the consumer's event loop (asyncio only)
    runs_on_loop: ClassVar[bool] = False
    #: with chunk_size="auto", grow chunks until a task takes about this long
    #: (tiny items then stop paying the engine's per-task cost); None: fixed
    adaptive_chunk_seconds: ClassVar[float | None] = None

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int) -> None:
        self.fn = fn
        self.options = options
        self.workers = workers

    @classmethod
    def default_workers(cls) -> int:
        return 1

    def auto_chunk_size(self, total: int | None) -> int:
        """Chunk size for ``chunk_size="auto"``; ``total`` is the input length if known."""
        return 1

    def default_max_in_flight(self, chunk: int) -> int:
        """``max_in_flight`` when the caller sets none: items pulled, not yet delivered."""
        return default_window(self.workers, chunk)

    @abstractmethod
    def start(self, engine: Engine) -> None:
        """Start the workers; they run until ``acquire`` returns None."""

    def abandon(self, task: Task) -> None:  # noqa: B027 - optional hook
        """``task`` timed out: stop it if possible and restore the capacity."""

    @abstractmethod
    def shutdown(self, cancel: bool) -> None:
        """Stop the workers. ``cancel``: do not wait for running items."""


class InlineBackend(Backend):
    """A backend without workers: the consumer runs each task itself."""

    @abstractmethod
    def step(self, engine: Engine) -> None:
        """Acquire and run one task (or wait as told) on the calling thread."""

    @abstractmethod
    async def astep(self, engine: Engine) -> None:
        """``step`` from a coroutine: awaits async functions, sleeps without blocking."""

    def start(self, engine: Engine) -> None:
        self.run_initializer()

    def shutdown(self, cancel: bool) -> None:
        return None

    def run_initializer(self) -> None:
        if self.options.initializer is not None:
            self.options.initializer(*self.options.initargs)
