"""The thread backend: daemon threads pulling tasks from the engine.

Threads start as work needs them, up to ``workers`` (as
``ThreadPoolExecutor`` does): a run of two items starts two threads.

A Python thread cannot be killed. When an item times out the engine fails it
with ``TimeoutError`` and this backend *abandons* the thread running it (the
thread finishes its call in the background and then exits, its result thrown
away) and starts a replacement, so the pool keeps its full capacity. Threads
are daemons so that a thread stuck forever never blocks interpreter exit.

**Warm threads** (``ThreadWorkers``, what a ``shoal.Pool`` keeps): a run is
served by the same ``ThreadBackend``, but each of its workers runs on a
thread lent by the warm set; a thread that leaves a run *parks* until a later
run asks for a worker. Two lifetimes, kept apart:

* a worker slot (``_Worker``) belongs to one run: the task it holds, whether
  the run abandoned it;
* a thread's life (``_Life``) spans runs: the initializer ran once at its
  start, ``ran`` counts its items for ``max_items_per_worker``, and
  ``retired`` (recycled, or abandoned after a timeout) means it exits when
  its run lets it go instead of parking.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend, Traits, WarmWorkers, cpu_count
from shoal._core.calling import close_thread_loop, run_chunk, sync_caller
from shoal._core.engine import Done, Wait
from shoal._core.errors import BrokenBackend
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task

_pool_ids = itertools.count(1)


class _Life:
    """One thread's life, across runs when it is a warm thread."""

    __slots__ = ("ran", "retired")

    def __init__(self) -> None:
        self.ran = 0  # items run, for max_items_per_worker
        self.retired = False  # exit when the run lets go, do not park


class _Worker:
    """One worker of one run."""

    __slots__ = ("abandoned", "life", "task", "thread")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.abandoned = False
        self.thread: threading.Thread | None = None
        self.life: _Life | None = None


class ThreadBackend(Backend):
    """Threads for I/O-bound work (the GIL is released while waiting).

    ``warm``: the warm set lending the threads (a pool's run); None: the run
    starts its own and they end with it.
    """

    traits = Traits(
        "threads",
        # The same default as concurrent.futures.ThreadPoolExecutor.
        default_workers=lambda: min(32, cpu_count() + 4),
        # Handing a chunk to a thread costs a lock and a wake-up: 2 ms of work
        # per chunk makes that negligible while keeping chunks short enough
        # that the threads share the work evenly.
        chunking=ChunkParams(target_seconds=0.002, min_seconds=0.002),
    )

    #: measure how long items wait for a CPU (the auto probe sets it)
    measure_waits = False

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int,
                 warm: ThreadWorkers | None = None) -> None:
        super().__init__(fn, options, workers)
        self._warm = warm
        # _cond guards _gen, _waiting, _closing and _workers. _gen changes on
        # every wake so that a worker that asked the engine before a wake
        # never sleeps through it (no lost wake-ups). Made here, not in
        # start(): a run cut short before start() still shuts down.
        self._cond = threading.Condition()
        self._gen = 0
        self._waiting = 0
        self._closing = False
        self._workers: list[_Worker] = []

    def start(self, engine: Engine) -> None:
        self._engine = engine
        self._call = sync_caller(self.fn)
        self._pool = next(_pool_ids)
        self._names = itertools.count()
        all_or_nothing = self.options.on_error == "all_or_nothing"
        self._stop_on_error = all_or_nothing
        # Under all_or_nothing another thread's failure stops this one's chunk
        # before its next item; the check costs a call per item, so only then.
        self._halted = (lambda: engine.stopped) if all_or_nothing and self.workers > 1 else None
        self._spawn()

    def _spawn(self) -> None:
        """Start a worker (lock not held by the caller)."""
        with self._cond:
            if self._closing or len(self._workers) >= self.workers:
                return
            worker = _Worker()
            self._workers.append(worker)
            if self._warm is None:
                # Started under the lock: shutdown() never sees (and joins) a
                # listed thread that has not started yet.
                worker.thread = threading.Thread(
                    target=self._run_cold, args=(worker,), daemon=True,
                    name=f"shoal-{self._pool}-{next(self._names)}")
                worker.thread.start()
        if self._warm is not None and not self._warm.launch(self, worker):  # closing
            self._leave(worker)

    def wake(self, everyone: bool) -> None:
        with self._cond:
            self._gen += 1
            if everyone:
                self._cond.notify_all()
                return
            if self._waiting:
                self._cond.notify()
                return
            # As ThreadPoolExecutor: a new thread only when none is idle. A
            # thread between two tasks (or still starting) will ask the engine
            # itself; the one calling here is about to run a task of its own.
            current = threading.current_thread()
            idle = any(w.task is None and w.thread is not current for w in self._workers)
            grow = not idle and not self._closing and len(self._workers) < self.workers
        if grow:
            self._spawn()  # work is waiting and every thread is busy: one more

    def _run_cold(self, me: _Worker) -> None:
        """A thread of its own for one run: initializer, work, exit."""
        life = me.life = _Life()
        try:
            if self.options.initializer is not None:
                try:
                    self.options.initializer(*self.options.initargs)
                except BaseException as exc:
                    self._engine.fail_run(exc)  # every worker would fail the same way
                    return
            self._work(me, life)
        finally:
            close_thread_loop()  # an async fn gave this thread a loop: close it with the thread
            self._leave(me)

    def serve_slot(self, me: _Worker, life: _Life) -> None:
        """Run worker ``me`` on the calling (warm) thread until the run lets it go."""
        me.thread = threading.current_thread()
        me.life = life
        try:
            self._work(me, life)
        finally:
            self._leave(me)

    def initializer_failed(self, me: _Worker, error: BaseException) -> None:
        """A warm thread lent for ``me`` failed its initializer: so would every other."""
        self._engine.fail_run(error)
        self._leave(me)

    def _leave(self, me: _Worker) -> None:
        with self._cond:
            if me in self._workers:
                self._workers.remove(me)
            self._cond.notify_all()  # shutdown() may wait for the workers to leave

    def _work(self, me: _Worker, life: _Life) -> None:
        engine = self._engine
        name = threading.current_thread().name
        while not me.abandoned and not self._closing:
            with self._cond:
                gen = self._gen
            got = engine.acquire()
            if isinstance(got, Done):
                break
            if isinstance(got, Wait):
                with self._cond:
                    if self._gen == gen and not self._closing:
                        self._waiting += 1
                        self._cond.wait(None if math.isinf(got.seconds) else got.seconds)
                        self._waiting -= 1
                continue
            if not self._run_task(me, got.task, name, life):
                break

    def _run_task(self, me: _Worker, task: Task, name: str, life: _Life) -> bool:
        """Run and report one task; False: this worker stops.

        A method of its own so that the task, its items and their values are
        let go when it returns, not held by a parked thread until its next task.
        """
        me.task = task
        outcome = run_chunk(self._call, task.items[task.done :] if task.done else task.items,
                            name, stop_on_error=self._stop_on_error, halted=self._halted,
                            measure_wait=self.measure_waits)
        me.task = None
        if me.abandoned:
            return False  # the engine has failed this item already; drop the result
        self._engine.complete(task, outcome)
        life.ran += len(outcome.values)
        limit = self.options.max_items_per_worker
        if limit is not None and life.ran >= limit:
            # Recycle: a fresh thread (and initializer) replaces this one.
            life.retired = True
            self._retire(me)
            return False
        return True

    def _retire(self, me: _Worker) -> None:
        self._leave(me)
        self._spawn()

    def abandon(self, task: Task) -> None:
        with self._cond:
            victims = [w for w in self._workers if w.task is task]
        for w in victims:
            w.abandoned = True
            if w.life is not None:
                w.life.retired = True  # a warm thread must not park: it may never return
            self._retire(w)

    def shutdown(self, cancel: bool) -> None:
        # Either way no thread takes another task; ``cancel`` only says not
        # to wait for the ones running (daemons: they finish on their own).
        current = threading.current_thread()
        with self._cond:
            self._closing = True
            self._gen += 1
            self._cond.notify_all()
            if cancel:
                return
            threads = [w.thread for w in self._workers if w.thread is not None]
            # Warm threads do not end with the run: wait until they have left it.
            self._cond.wait_for(lambda: all(w.thread is current for w in self._workers))
        if self._warm is None:
            for t in threads:
                if t is not current:
                    t.join()


class _WarmThread:
    """A thread of a warm set, and the job it is lent for (guarded by the set's lock)."""

    __slots__ = ("job", "life", "thread", "wakeup")

    def __init__(self, lock: threading.Lock) -> None:
        self.job: tuple[ThreadBackend, _Worker] | None = None
        self.life = _Life()
        self.thread: threading.Thread | None = None
        self.wakeup = threading.Condition(lock)  # notified when a job is lent or on close


class ThreadWorkers(WarmWorkers):
    """Threads kept between runs (a ``shoal.Pool``'s); see the module docstring.

    A thread runs the pool's initializer once when it starts, then serves one
    run's worker at a time and parks in between. Threads start as runs need
    them, up to the workers a run asks for; a retired thread (recycled, or
    abandoned after a timeout) exits and a run that needs a worker starts a
    fresh one.
    """

    traits = ThreadBackend.traits

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._id = next(_pool_ids)
        self._names = itertools.count()
        # _lock guards _parked, _threads, _closed and every _WarmThread.job.
        self._lock = threading.Lock()
        self._parked: list[_WarmThread] = []
        self._threads: list[_WarmThread] = []
        self._closed = False

    def serve(self, fn: Callable[[Any], Any], options: Options, workers: int) -> Backend:
        with self._lock:
            if self._closed:
                raise BrokenBackend("the pool's threads are closed; make a new shoal.Pool")
        return ThreadBackend(fn, options, workers, warm=self)

    @property
    def threads(self) -> int:
        """Threads alive or starting (parked, serving a run, or retiring)."""
        with self._lock:
            return len(self._threads)

    def launch(self, backend: ThreadBackend, slot: _Worker) -> bool:
        """Serve ``slot`` of ``backend``'s run on a parked thread, else a new one.

        Returns False when the set is closed (no thread will serve it).
        """
        with self._lock:
            if self._closed:
                return False
            if self._parked:
                t = self._parked.pop()  # the most recently parked: its caches are warmest
                t.job = (backend, slot)
                t.wakeup.notify()
                return True
            t = _WarmThread(self._lock)
            t.job = (backend, slot)
            t.thread = threading.Thread(target=self._live, args=(t,), daemon=True,
                                        name=f"shoal-{self._id}-{next(self._names)}")
            self._threads.append(t)
        t.thread.start()
        return True

    def _live(self, me: _WarmThread) -> None:
        """A warm thread: the initializer once, then one run's worker at a time."""
        error: BaseException | None = None
        init = self.options.initializer
        if init is not None:
            try:
                init(*self.options.initargs)
            except BaseException as exc:
                error = exc
        try:
            while True:
                with self._lock:
                    job = me.job
                assert job is not None
                backend, slot = job
                if error is not None:
                    backend.initializer_failed(slot, error)
                    return
                backend.serve_slot(slot, me.life)
                with self._lock:
                    me.job = None
                    if me.life.retired or self._closed:
                        return
                    self._parked.append(me)
                    while me.job is None and not self._closed:
                        me.wakeup.wait()
                    if me.job is None:
                        return
        finally:
            close_thread_loop()  # an async fn gave this thread a loop
            with self._lock:
                self._threads.remove(me)
                if me in self._parked:
                    self._parked.remove(me)

    def close(self, cancel: bool) -> None:
        with self._lock:
            self._closed = True
            for t in self._parked:
                t.wakeup.notify()
            # A retired thread may be stuck forever in an abandoned call: never waited for.
            threads = [t.thread for t in self._threads if not t.life.retired]
        if cancel:
            return
        current = threading.current_thread()
        for thread in threads:
            if thread is not None and thread is not current:
                thread.join()
