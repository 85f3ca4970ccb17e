"""The process backend: workers in child processes, forked from a fork server.

Data flow (one *hub* thread per run does all the I/O, on non-blocking sockets)::

    driver: consumer thread    driver: hub thread (hub.py)   child processes
    ───────────────────────    ───────────────────────────   ───────────────
                               Engine.acquire()
                                 └▶ pickle chunk ──socket──▶ worker (worker.py):
                                    (first: JOB = fn, once)    run_chunk(fn, items)
    take() ◀── Engine ◀── complete(Outcome)                       │
                                 ▲ unpickle ◀────socket──── results: one frame per chunk
                                                              (stream mode: one per item)
    abandon(), shutdown()
      └▶ inbox ─▶ hub ── SPAWN / KILL / QUIT ──control──▶ fork server ──fork──▶ worker
                  hub ◀── SPAWNED + socket fd, EXITED(code) ──┘   (forkserver.py)

**Warm workers.** ``ProcessWorkers`` is a pool kept between runs (what a
``shoal.Pool`` holds): its fork server and workers outlive a run, and
``serve`` makes the per-run ``ProcessBackend`` bound to them. A plain
``shoal.map`` uses the same path: its ``ProcessBackend`` makes a private
``ProcessWorkers`` and closes it when the run ends. Each run is a *job*:
``fn`` is pickled once per run and sent to each worker once, before that
worker's first chunk of the run (``JOB``), with the run's options (stop on
error); the initializer belongs to the pool and runs once per worker.
``state.py`` holds what the pool keeps between runs.

**Workers start as work needs them.** None is started up front: the hub
starts one when a task is waiting and no worker is free, up to the run's
``workers``. Each start is for a task taken from the engine, so a pool never
has more workers than ``workers``, nor more than the tasks (hence items) that
were in flight at once: ``workers=200`` for 2 items starts 2. A task taken for
a worker that is starting waits in the hub; with a timeout it goes back to the
engine at once, so that its deadline runs only once a worker has it (under
a rate limit that costs its tokens twice: a slower start, never a faster
rate). A crashed, timed-out or recycled worker is replaced the same way.

**Start method.** Workers are forked from a per-pool *fork server*, itself
forked from the driver when the driver is single-threaded and started with
exec otherwise: ``forkserver.py`` says why and what each costs, and how no
process outlives the pool; each worker is a process group of its own, killed
whole.

**Crash isolation.** The fork server reaps workers and reports each exit code
(negative: a signal). A worker that dies fails the item it was running with
``WorkerCrashed``; its other items are released to run again. In *stream*
mode (a timeout is set, or the chunk is being re-run after a crash) a worker
reports each item as it finishes, so the running item is known exactly and
each report restarts the engine's deadline. In *batch* mode (the fast path:
one frame per chunk) a crash in a chunk of several items cannot be pinned on
one item: the engine re-runs the chunk item by item, where the culprit
crashes again and fails alone. Items before it in that chunk run twice (their
results died with the worker); an item that crashed once and not again fails
nothing. The same rule (``Engine.lost``) handles a chunk that does not
unpickle in the worker and results that do not unpickle in the driver.

**all_or_nothing.** A worker stops its chunk at the chunk's first failure
(``Outcome(stopped=True)``: the engine takes the rest back). Once the engine
has stopped, the hub sends nothing more, takes back every chunk queued behind
a running one that has not started (claim pipe), and writes the run's number
into the pool's stop flag, a word of shared memory that workers look at
between items (before every item of a millisecond or more, about every
millisecond of shorter ones); without retries the failing worker writes it
itself, before the driver has read its report. So no item starts once the
failure is known, except on a worker that was between its look at the flag
and the item's start, and except the rest of a chunk of tiny items (under
0.1 ms each) that takes under ~20 ms: a look per stretch of them costs a
copy per item. Items already running run to their end (or are killed at
shutdown).

**Chunking.** With ``chunk_size="auto"`` the engine's ``ChunkPolicy`` sizes
chunks towards ~20 ms of work, four per worker of what remains, each pickle
small enough to sit whole in the worker socket's buffer. Without a timeout
each worker has one chunk queued behind the running one, so it never waits
for the driver, and it writes its results without waiting for the driver to
read them. A queued chunk never waits behind a slow one while a worker is
idle: a worker that goes idle when the engine has nothing to hand out
*steals* a chunk queued behind a busy worker, if that worker has not started
it (the claim pipe in ``protocol.py`` decides, without either side waiting).
Tiny items cost the driver one pickle of the chunk and one unpickle of its
results; values stay in the engine's columns, with no per-item object.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend, Traits, WarmWorkers, cpu_count
from shoal._backends._processes.hub import Hub, Job
from shoal._backends._processes.protocol import (
    JOB_FAILURE_ENDS_RUN,
    JOB_SHARES_INIT_GLOBALS,
    JOB_STOP_ON_ERROR,
    initializer_payload,
    job_frame,
    pickle_for_workers,
)
from shoal._backends._processes.state import CANCEL_EXIT_SECONDS, GRACEFUL_EXIT_SECONDS, PoolState
from shoal._backends._processes.worker import unwrap_partial
from shoal._core.errors import BackendUnavailable, BrokenBackend
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal._core.engine import Engine, Task

TRAITS = Traits(
    "processes", default_workers=cpu_count, streams_items=True, isolates_crashes=True,
    dispatcher_reads_results=True,
    # A chunk costs a pickle each way and a socket write: ~20 ms of work
    # makes that small; its pickle stays under a socket buffer's worth.
    chunking=ChunkParams(target_seconds=0.02, min_seconds=0.002, growth=8.0,
                         chunks_per_worker=4, max_items=1 << 16, max_bytes=1 << 17),
)


def _needs_fork() -> None:
    if not hasattr(os, "fork"):
        raise BackendUnavailable(
            'backend="processes" needs a POSIX system (os.fork); use backend="threads"')


class ProcessWorkers(WarmWorkers):
    """Worker processes kept between runs (see the module docstring).

    ``ProcessWorkers(options, workers)``: the initializer (``options.initializer``,
    ``initargs``) runs once in each worker; ``workers`` is the default of a
    run's. No process starts before a run needs one. ``close`` (or garbage
    collection, or interpreter exit) leaves no child process.
    """

    traits = TRAITS

    def __init__(self, options: Options, workers: int | None = None) -> None:
        """Pickle the initializer once, before anything runs.

        Raises:
            NotPicklable: the initializer or its arguments cannot be pickled.
            BackendUnavailable: not a POSIX system.
        """
        _needs_fork()
        super().__init__(options)
        self.workers = workers or options.workers or cpu_count()
        self.initializer = options.initializer
        self._state = PoolState(initializer_payload(options.initializer, options.initargs))
        # _lock guards _serving: the run using the workers (one at a time).
        self._lock = threading.Lock()
        self._serving: ProcessBackend | None = None
        # Garbage collection and interpreter exit close the pool (kill its processes).
        self._finalizer = weakref.finalize(self, self._state.close, True)

    def serve(self, fn: Callable[[Any], Any], options: Options, workers: int) -> ProcessBackend:
        """A backend for one run of ``fn`` on these workers.

        Raises:
            NotPicklable: ``fn`` cannot be pickled to cross to the workers.
        """
        return ProcessBackend(fn, options, workers, pool=self)

    def close(self, cancel: bool = False) -> None:
        """Stop every worker and the fork server; a run still using them fails."""
        with self._lock:
            run = self._serving
        if run is not None:
            run.interrupt(BrokenBackend("the process pool was closed while a run was using it"))
        if self._finalizer.detach() is not None:
            self._state.close(cancel)

    # ------------------------------------------------------------ for runs
    def _begin(self, run: ProcessBackend) -> PoolState:
        """``run`` starts using the workers.

        Raises:
            BrokenBackend: the pool is closed, or serving another run.
        """
        with self._lock:
            if self._state.closed:
                raise BrokenBackend("the process pool is closed; start another")
            if self._serving is not None:
                raise BrokenBackend(
                    "the process pool is serving another run; its workers serve one run "
                    "at a time (use another pool, or wait for that run to end)")
            self._serving = run
        return self._state

    def _end(self, run: ProcessBackend) -> None:
        with self._lock:
            if self._serving is run:
                self._serving = None


class ProcessBackend(Backend):
    """One run on worker processes, isolated from each other's crashes."""

    traits = TRAITS

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int,
                 pool: ProcessWorkers | None = None) -> None:
        """Pickle ``fn`` once for the run, before anything runs.

        ``pool``: the warm workers to run on; None: a private pool, closed
        when the run ends.

        Raises:
            NotPicklable: ``fn``, the initializer or its arguments cannot be
                pickled (with cloudpickle) to cross to the worker processes.
            BackendUnavailable: not a POSIX system.
        """
        super().__init__(fn, options, workers)
        _needs_fork()
        fn_blob = pickle_for_workers("fn", fn)
        self._private = pool is None
        self._pool = ProcessWorkers(options, workers) if pool is None else pool
        flags = 0
        if options.on_error == "all_or_nothing":
            flags |= JOB_STOP_ON_ERROR
            if options.retries.max_attempts == 1:
                flags |= JOB_FAILURE_ENDS_RUN
        if _shares_globals(fn, self._pool.initializer):
            flags |= JOB_SHARES_INIT_GLOBALS
        job = next(self._pool._state.jobs)
        self._job = Job(job, job_frame(job, fn_blob, flags), options.timeout is not None,
                        options.max_items_per_worker)
        self._hub: Hub | None = None
        self._started = False

    def start(self, engine: Engine) -> None:
        """Start the hub (and the pool's fork server, on its first run).

        Raises:
            BrokenBackend: the fork server could not be started, or the pool
                is closed or serving another run.
        """
        self._engine = engine
        state = self._pool._begin(self)
        self._started = True
        state.start(self._job.id)
        self._hub = Hub(state, engine, self._job, lambda: self.workers)
        self._hub.thread.start()

    def wake(self, everyone: bool = False) -> None:
        # One hub serves every worker: ``everyone`` changes nothing.
        if self._hub is not None:
            self._hub.wake()

    def abandon(self, task: Task) -> None:
        """``task`` timed out: SIGKILL its worker's group; a new one starts if needed."""
        if self._hub is not None:
            self._hub.abandon(task)

    def interrupt(self, error: BaseException) -> None:
        """The pool is closing under this run: fail it, stop its workers."""
        self._engine.fail_run(error)
        self.shutdown(True)

    def shutdown(self, cancel: bool) -> None:
        """End the run's use of the workers (a private pool: stop them all).

        ``cancel``: SIGKILL the busy workers now (Ctrl-C, a failed batch).
        """
        hub = self._hub
        if hub is not None:
            hub.finish()
            hub.thread.join(CANCEL_EXIT_SECONDS if cancel else GRACEFUL_EXIT_SECONDS)
            if hub.thread.is_alive():  # stuck pulling the input, say: it still owns the pool
                self._pool._state.broken = (
                    "a run on this process pool did not let go of its workers; close the "
                    "pool and start another")
        if self._started:
            self._pool._end(self)
        if self._private:
            self._pool.close(cancel)


def _shares_globals(fn: Callable[[Any], Any], initializer: Callable[..., Any] | None) -> bool:
    """``fn`` and the initializer see one module's globals in the driver."""
    if initializer is None:
        return False
    fn_globals = getattr(unwrap_partial(fn), "__globals__", None)
    init_globals = getattr(unwrap_partial(initializer), "__globals__", None)
    return fn_globals is not None and fn_globals is init_globals
