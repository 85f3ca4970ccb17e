"""The backend contract: start workers, wake them, abandon a task, shut down.

A backend only runs work. Workers pull: each calls ``engine.acquire()`` when
it is free and gets ``Work(task)``, ``Wait(seconds)`` or ``DONE``; it runs
the task's items and reports with ``engine.complete(task, outcome)`` (or
``engine.lost(...)`` when a worker died with the task, ``engine.release``
when it gives a task back). Everything else (retries, timeouts, rate limits,
ordering, failure strategies, chunk sizes, progress, checkpoints) is the
engine's and the planner's. What a backend is like -- its default number of
workers, how chunks should be sized for it, whether it can report a chunk
item by item -- it declares as data (``Traits``), which the planner reads: no
code asks a backend's name.
"""

from __future__ import annotations

import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from shoal._core.arguments import unwrap_spread
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task, Wait


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Traits:
    """What a backend is like, for the planner.

    Attributes:
        name: the ``backend=`` value.
        default_workers: workers when the caller sets none.
        chunking: how to size chunks with ``chunk_size="auto"``; None: one
            item per task (the backend hands items over one by one anyway).
        inline: no workers: the consumer runs each task itself (``InlineBackend``).
        runs_on_loop: workers are coroutines on the consumer's event loop.
        shared_lots: the largest *lot* (0: none): a task that every free
            worker takes items from, one at a time, so that no item waits
            behind a slow one.
        streams_items: can report a chunk item by item, so a chunk may carry
            a per-item deadline (elsewhere a timeout means one item per task).
        isolates_crashes: a worker that dies costs one item, not the run.
        recycles_workers: honours ``max_items_per_worker``.
        dispatcher_reads_results: one thread both asks the engine for work
            and reads results, so an input whose ``next()`` blocks is read
            by a reader thread from the start (results are never held back).
    """

    name: str
    default_workers: Callable[[], int]
    chunking: ChunkParams | None = None
    inline: bool = False
    runs_on_loop: bool = False
    shared_lots: int = 0
    streams_items: bool = False
    isolates_crashes: bool = False
    recycles_workers: bool = True
    dispatcher_reads_results: bool = False


class Backend(ABC):
    """Runs the engine's tasks on some kind of worker (see the module docstring)."""

    traits: ClassVar[Traits]

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int) -> None:
        self.fn = fn
        self.options = options
        self.workers = workers

    @property
    def name(self) -> str:
        return self.traits.name

    @abstractmethod
    def start(self, engine: Engine) -> None:
        """Start the workers; they run until ``acquire`` answers ``DONE``."""

    @abstractmethod
    def wake(self, everyone: bool) -> None:
        """Work may be available. ``everyone=False`` wakes one waiting worker
        (it passes the baton on if it finds more); ``everyone=True`` wakes all,
        because the run is over for all of them. Thread-safe."""

    def resize(self, workers: int) -> None:
        """Allow ``workers`` workers from now on (the auto probe ran on one)."""
        self.workers = workers
        self.wake(False)

    def abandon(self, task: Task) -> None:  # noqa: B027 - optional: not every backend holds tasks
        """``task`` timed out: stop it if possible and restore the capacity."""

    @abstractmethod
    def shutdown(self, cancel: bool) -> None:
        """Stop the workers. ``cancel``: do not wait for running items."""

    async def ashutdown(self, cancel: bool) -> None:
        """``shutdown`` from a coroutine consumer, without blocking its loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(None, self.shutdown, cancel))


class InlineBackend(Backend):
    """A backend without workers: the consumer runs each task itself."""

    @abstractmethod
    def step(self, engine: Engine) -> Wait | None:
        """Acquire and run one task on the calling thread; or say how long to
        wait (the consumer waits, so that it still sees results and deadlines)."""

    @abstractmethod
    async def astep(self, engine: Engine) -> Wait | None:
        """``step`` from a coroutine: awaits async functions on the consumer's loop."""

    def start(self, engine: Engine) -> None:
        if self.options.initializer is not None:
            self.options.initializer(*self.options.initargs)

    def wake(self, everyone: bool) -> None:
        return None  # nobody waits: the consumer steps again after each wake-up

    def shutdown(self, cancel: bool) -> None:
        return None


class WarmWorkers(ABC):
    """Workers of one backend kind kept between runs (what ``shoal.Pool`` holds).

    Runs use them one at a time: ``serve`` makes the per-run ``Backend``
    (bound to these workers; its ``shutdown`` ends the run's use of them, not
    the workers), and ``close`` stops the workers for good, leaving no thread
    or child process behind. The initializer belongs to the warm workers: it
    runs once per worker, not once per run.

    A pool makes them with ``cls(options)``, its own validated options: the
    workers' settings (``workers``, ``initializer``, ``initargs``,
    ``max_items_per_worker``, ``address``, ``backend_options``) are the
    pool's and the same in every run's options; the rest is per run.
    """

    traits: ClassVar[Traits]

    def __init__(self, options: Options) -> None:
        self.options = options
        # seconds per item each function took in its last run here (see ``pace``)
        self._paces: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def pace(self, fn: Callable[..., Any]) -> float | None:
        """Seconds per item ``fn`` took in its last run on these workers, if known.

        A run of the same function starts its chunk policy from it (as the
        auto probe's measure seeds the chosen backend's), so a warm call of
        tiny items hands them over in a few large chunks from the first one
        instead of learning their size again from chunks of one.
        """
        try:
            return self._paces.get(unwrap_spread(fn))
        except TypeError:  # not weak-referenceable: nothing remembered
            return None

    def learn(self, fn: Callable[..., Any], per_item: float) -> None:
        """Remember what one item of ``fn`` took, for its next run here."""
        try:
            self._paces[unwrap_spread(fn)] = per_item
        except TypeError:
            pass

    @abstractmethod
    def serve(self, fn: Callable[[Any], Any], options: Options, workers: int) -> Backend:
        """A backend for one run of ``fn``, served by these workers."""

    @abstractmethod
    def close(self, cancel: bool) -> None:
        """Stop the workers. ``cancel``: do not wait for running items."""


#: where a run finds warm workers for a backend name (None: start its own)
WarmLookup = Callable[[str], "WarmWorkers | None"]
