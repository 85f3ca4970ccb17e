"""The thread backend: a pool of daemon threads pulling tasks from the engine.

Threads start as work needs them, up to ``workers`` (as
``ThreadPoolExecutor`` does): a run of two items starts two threads.

A Python thread cannot be killed. When an item times out the engine fails it
with ``TimeoutError`` and this backend *abandons* the thread running it (the
thread finishes its call in the background and then exits, its result thrown
away) and starts a replacement, so the pool keeps its full capacity. Threads
are daemons so that a thread stuck forever never blocks interpreter exit.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import TYPE_CHECKING

from shoal._backends._base import Backend, Traits, cpu_count
from shoal._core.calling import Outcome, close_thread_loop, run_chunk, sync_caller
from shoal._core.engine import Done, Wait
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task

_pool_ids = itertools.count(1)


class _Worker:
    __slots__ = ("abandoned", "task", "thread")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.abandoned = False
        self.thread: threading.Thread | None = None


class ThreadBackend(Backend):
    """Threads for I/O-bound work (the GIL is released while waiting)."""

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
        # _cond guards _gen, _waiting, _closing and _workers. _gen changes on
        # every wake so that a worker that asked the engine before a wake
        # never sleeps through it (no lost wake-ups).
        self._cond = threading.Condition()
        self._gen = 0
        self._waiting = 0
        self._closing = False
        self._workers: list[_Worker] = []
        self._spawn()

    def _spawn(self) -> None:
        """Start a thread (lock not held by the caller)."""
        with self._cond:
            if self._closing or len(self._workers) >= self.workers:
                return
            worker = _Worker()
            self._workers.append(worker)
        name = f"shoal-{self._pool}-{next(self._names)}"
        worker.thread = threading.Thread(target=self._run, args=(worker,), name=name, daemon=True)
        worker.thread.start()

    def wake(self, everyone: bool) -> None:
        with self._cond:
            self._gen += 1
            if everyone:
                self._cond.notify_all()
                return
            if self._waiting:
                self._cond.notify()
                return
            grow = not self._closing and len(self._workers) < self.workers
        if grow:
            self._spawn()  # work is waiting and every thread is busy: one more

    def _run(self, me: _Worker) -> None:
        try:
            self._work(me)
        finally:
            close_thread_loop()  # an async fn gave this thread a loop: close it with the thread
            with self._cond:
                if me in self._workers:
                    self._workers.remove(me)

    def _work(self, me: _Worker) -> None:
        engine = self._engine
        name = threading.current_thread().name
        if self.options.initializer is not None:
            try:
                self.options.initializer(*self.options.initargs)
            except BaseException as exc:
                engine.fail_run(exc)  # every worker would fail the same way: stop the run
                return
        ran = 0
        limit = self.options.max_items_per_worker
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
            task = got.task
            me.task = task
            outcome = self._run_task(task, name)
            me.task = None
            if me.abandoned:
                break  # the engine has failed this item already; drop the result
            engine.complete(task, outcome)
            ran += len(outcome.values)
            if limit is not None and ran >= limit:
                # Recycle: a fresh thread (and initializer) replaces this one.
                self._retire(me)
                break

    def _run_task(self, task: Task, name: str) -> Outcome:
        return run_chunk(self._call, task.items[task.done :] if task.done else task.items, name,
                         stop_on_error=self._stop_on_error, halted=self._halted,
                         measure_wait=self.measure_waits)

    def _retire(self, me: _Worker) -> None:
        with self._cond:
            if me in self._workers:
                self._workers.remove(me)
        self._spawn()

    def abandon(self, task: Task) -> None:
        with self._cond:
            victims = [w for w in self._workers if w.task is task]
        for w in victims:
            w.abandoned = True
            self._retire(w)

    def shutdown(self, cancel: bool) -> None:
        # Either way no thread takes another task; ``cancel`` only says not
        # to wait for the ones running (daemons: they finish on their own).
        with self._cond:
            self._closing = True
            self._gen += 1
            self._cond.notify_all()
            threads = [w.thread for w in self._workers if w.thread is not None]
        if cancel:
            return
        current = threading.current_thread()
        for t in threads:
            if t is not current:
                t.join()
