"""The thread backend: a pool of daemon threads pulling tasks from the engine.

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

from shoal._backends._base import Backend, cpu_count
from shoal._core.calling import Outcome, close_thread_loop, run_chunk, sync_caller

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

    name = "threads"
    adaptive_chunk_seconds = 0.002

    @classmethod
    def default_workers(cls) -> int:
        # The same default as concurrent.futures.ThreadPoolExecutor.
        return min(32, cpu_count() + 4)

    def start(self, engine: Engine) -> None:
        self._engine = engine
        self._call = sync_caller(self.fn)
        self._pool = next(_pool_ids)
        self._names = itertools.count()
        # _cond guards _gen, _waiting and _closing. _gen changes on every wake
        # so that a worker that asked the engine before a wake never sleeps
        # through it (no lost wake-ups).
        self._cond = threading.Condition()
        self._gen = 0
        self._waiting = 0
        self._closing = False
        # _workers_lock guards _workers (abandon runs on the consumer thread).
        self._workers_lock = threading.Lock()
        self._workers: list[_Worker] = []
        engine.on_capacity = self._wake
        for _ in range(self.workers):
            self._spawn()

    def _spawn(self) -> None:
        worker = _Worker()
        name = f"shoal-{self._pool}-{next(self._names)}"
        worker.thread = threading.Thread(target=self._run, args=(worker,), name=name, daemon=True)
        with self._workers_lock:
            self._workers.append(worker)
        worker.thread.start()

    def _wake(self, everyone: bool = False) -> None:
        with self._cond:
            self._gen += 1
            if everyone:
                self._cond.notify_all()
            elif self._waiting:
                self._cond.notify()

    def _run(self, me: _Worker) -> None:
        try:
            self._work(me)
        finally:
            close_thread_loop()  # an async fn gave this thread a loop: close it with the thread

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
            if got is None:
                break
            if isinstance(got, float):
                with self._cond:
                    if self._gen == gen and not self._closing:
                        self._waiting += 1
                        self._cond.wait(None if math.isinf(got) else got)
                        self._waiting -= 1
                continue
            # Pass the baton: there may be more work than this one task.
            if self._waiting:
                self._wake()
            me.task = got
            outcome = self._run_task(got, name)
            me.task = None
            if me.abandoned:
                break  # the engine has failed this item already; drop the result
            engine.complete(got, outcome)
            ran += len(got.items)
            if limit is not None and ran >= limit:
                # Recycle: a fresh thread (and initializer) replaces this one.
                self._retire(me)
                break

    def _run_task(self, task: Task, name: str) -> Outcome:
        try:
            return run_chunk(self._call, task.items[task.done :], name)
        except BaseException as exc:  # SystemExit and the like: fail the items, keep the pool
            n = len(task.items) - task.done
            return Outcome([None] * n, dict.fromkeys(range(n), exc), 0.0, name)

    def _retire(self, me: _Worker) -> None:
        with self._workers_lock:
            if me in self._workers:
                self._workers.remove(me)
        if not self._closing:
            self._spawn()

    def abandon(self, task: Task) -> None:
        with self._workers_lock:
            victims = [w for w in self._workers if w.task is task]
        for w in victims:
            w.abandoned = True
            self._retire(w)

    def shutdown(self, cancel: bool) -> None:
        self._closing = cancel
        self._wake(everyone=True)
        if cancel:
            return  # daemon threads: a running call finishes on its own
        with self._workers_lock:
            threads = [w.thread for w in self._workers if w.thread is not None]
        current = threading.current_thread()
        for t in threads:
            if t is not current:
                t.join()
