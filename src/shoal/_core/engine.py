"""The engine: one scheduler for every backend.

Data flow (workers *pull*; nothing is pushed at a worker that is not ready)::

    items ─pull─▶ acquire() ─Task─▶ worker (thread / coroutine / process feeder / dask)
      ▲   │ store.restore(): already done? → settled at once      │
      │   ▼                                                        ▼ Outcome
      │ rate limit (TokenBucket)            complete() ── failed? ─▶ RetryPolicy ─▶ retry heap
      │                                                        │ settled
      └── capacity (max_in_flight) ◀── take() ◀── Segments, ordered buffer or FIFO
                                        consumer (map / run / imap / aimap)

Every method takes the engine lock (``_lock``), so workers on any number of
threads may call ``acquire``/``complete`` while one consumer calls ``take``.
The engine never sleeps or blocks: ``acquire`` answers "run this", "ask again
in N seconds" or "no more work", and the *caller* waits in its own way (a
thread on a Condition, a coroutine on an Event). Timeouts are the consumer's
job: it waits at most until ``next_deadline()`` and calls ``expire()``, then
tells the backend to ``abandon`` each expired task (kill, cancel or replace).

Invariant: every input index ends in exactly one delivered result. A task's
items are consecutive indices; an item that will be retried leaves its task
and comes back as a one-item task; a task that timed out fails the item that
was running and re-queues the ones after it, untouched.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal._core.calling import Outcome
from shoal._core.options import Options
from shoal._core.results import ItemResult
from shoal._policies.rate import TokenBucket
from shoal._sinks.base import ResultStore

WAIT_FOR_SIGNAL = math.inf  # acquire(): nothing to do until woken


@dataclass(slots=True, eq=False)
class Task:
    """Consecutive items handed to one worker at once.

    ``done`` counts items already reported (a backend may report a chunk in
    several parts, in order, or out of order with ``complete(..., at=k)``);
    ``closed`` is set once the engine stops listening to it (settled, or
    abandoned after a timeout). ``release`` and timeouts assume in-order
    reports: the reported items are the first ``done`` ones.
    """

    start: int
    items: Sequence[Any]  # a list; a range when the input is a range
    attempt: int
    seq: int
    started: float = 0.0
    deadline: float | None = None
    done: int = 0
    closed: bool = False

    @property
    def stop(self) -> int:
        return self.start + len(self.items)


@dataclass(slots=True)
class Segment:
    """Settled results of consecutive indices ``start .. start+count-1``.

    Either ``results`` holds finished ``ItemResult`` objects, or, on the fast
    path (every item succeeded on one attempt), the columns do and no per-item
    object is built until somebody asks for one. ``durations`` holds each
    item's own seconds when the backend measured them; otherwise every item
    gets the average, ``per_item``.
    """

    start: int
    count: int
    results: list[ItemResult[Any]] | None = None
    items: Sequence[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    attempt: int = 1
    per_item: float = 0.0
    worker: str = ""
    durations: list[float] | None = None

    def item_results(self) -> list[ItemResult[Any]]:
        if self.results is None:
            s, a, w = self.start, self.attempt, self.worker
            durations = self.durations or [self.per_item] * self.count
            self.results = [
                ItemResult(s + k, x, True, v, None, a, d, w)
                for k, (x, v, d) in enumerate(zip(self.items, self.values, durations,
                                                  strict=True))
            ]
        return self.results


class Engine:
    """Scheduling state of one run. See the module docstring for the flow."""

    def __init__(
        self,
        items: Iterator[Any] | range,
        options: Options,
        *,
        chunk_size: int,
        max_in_flight: int,
        store: ResultStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._source = iter(items)
        # A range is sliced rather than iterated: a chunk of it is a range,
        # which costs nothing to make or to free and pickles in a few bytes.
        self._range = items if type(items) is range and store is None else None
        self._opts = options
        self._chunk = chunk_size
        self._max_in_flight = max(max_in_flight, chunk_size)
        self._store = store
        self.clock = clock
        self._bucket = TokenBucket(options.rate, clock()) if options.rate else None
        self._seq = itertools.count()
        # The lock guards everything below.
        self._next_index = 0  # next input index to pull
        self._exhausted = False
        self._held: deque[Task] = deque()  # pulled or re-queued, waiting for a token
        self._retry_heap: list[tuple[float, int, Task]] = []
        self._in_flight: dict[int, Task] = {}
        self._deadlines: list[tuple[float, int, Task]] = []  # lazy: stale entries skipped
        self._outstanding = 0  # items pulled and not yet taken by the consumer
        self._ordered = options.ordered
        self._buffer: dict[int, Segment] = {}  # ordered: first index -> segment
        self._fifo: deque[Segment] = deque()  # unordered
        self._next_deliver = 0
        self._stopped = False
        self._adaptive: tuple[float, int, int] | None = None  # (target s, workers, cap)
        self._per_item: float | None = None  # moving average of item seconds
        self.items_run = 0  # items reported by workers (not restored ones)
        self.failure: BaseException | None = None  # all_or_nothing: the first error
        self.fatal: BaseException | None = None  # the input or the backend broke
        # Set by the driver / backend; called without the lock held.
        self.on_settled: Callable[[], None] = _noop
        # on_capacity(everyone): work may be available. everyone=False wakes
        # one waiting worker (it passes the baton on if it finds work);
        # everyone=True wakes all, because the run is over for all of them.
        self.on_capacity: Callable[[bool], None] = _noop_wake

    def set_chunk_size(self, chunk_size: int, max_in_flight: int) -> None:
        """Change chunking: once ``backend="auto"`` has chosen a backend, or
        whenever a backend sizes chunks itself (the Dask backend's ChunkPlan)."""
        with self._lock:
            self._chunk = chunk_size
            limit = self._opts.max_in_flight or max_in_flight
            self._max_in_flight = max(limit, chunk_size)

    def adapt_chunks(self, target_seconds: float, workers: int, cap: int | None = None) -> None:
        """Size chunks from measured item time: each task should take about
        ``target_seconds``, so tiny items stop paying a per-task cost each.

        ``cap`` bounds a chunk; by default 16,384 items shared out among the
        workers (at least 1,024 each), because the window of items in flight
        grows with chunks x workers and must stay small in memory.
        """
        if cap is None:
            cap = max(1024, 16384 // max(1, workers))
        with self._lock:
            self._adaptive = (target_seconds, workers, cap)

    def _adapt(self, per_item: float) -> None:
        assert self._adaptive is not None
        target, workers, cap = self._adaptive
        est = per_item if self._per_item is None else 0.7 * self._per_item + 0.3 * per_item
        self._per_item = est
        chunk = max(1, min(cap, int(target / max(est, 1e-9))))
        limit = self._opts.max_in_flight
        if limit is not None:
            chunk = max(1, min(chunk, limit // max(1, workers)))
        else:
            self._max_in_flight = max(self._max_in_flight, 4 * workers * chunk)
        self._chunk = chunk

    def probe_can_continue(self) -> bool:
        """More input may run inline now without waiting (used by the auto probe)."""
        with self._lock:
            if self._stopped or self._retry_heap or self._held:
                return False
            return not self._exhausted and self._outstanding + self._chunk <= self._max_in_flight

    @property
    def exhausted(self) -> bool:
        """The input iterator has ended."""
        return self._exhausted

    # ----------------------------------------------------------------- workers
    def acquire(self) -> Task | float | None:
        """Next task to run, or seconds to wait before asking again, or None.

        ``WAIT_FOR_SIGNAL`` (inf) means: wait until ``on_capacity`` fires.
        None means no more work will ever come; the worker may exit.
        """
        settled = False
        with self._lock:
            now = self.clock()
            result, settled = self._acquire_locked(now)
        if settled:
            self.on_settled()
        if result is None:
            self.on_capacity(True)  # the run is over: let waiting workers exit too
        return result

    def _acquire_locked(self, now: float) -> tuple[Task | float | None, bool]:
        if self._stopped:
            return None, False
        settled = False
        task: Task | None = None
        if self._held:
            task = self._held.popleft()
        elif self._retry_heap and self._retry_heap[0][0] <= now:
            task = heapq.heappop(self._retry_heap)[2]
        elif not self._exhausted and self._outstanding + self._chunk <= self._max_in_flight:
            task, settled = self._pull(now)
            if self._stopped:
                return None, settled
        if task is None:
            if settled and not self._exhausted:
                # Restored results filled the window: ask again as soon as
                # the consumer has taken them (an inline backend is that
                # consumer; waiting for a signal would wait for itself).
                return 0.0, settled
            if self._retry_heap:
                return self._retry_heap[0][0] - now, settled
            if self._exhausted and not self._in_flight and not self._held:
                return None, settled
            return WAIT_FOR_SIGNAL, settled
        if self._bucket is not None:
            wait = self._bucket.try_take(len(task.items), now)
            if wait > 0:
                self._held.appendleft(task)
                return wait, settled
        task.started = now
        if self._opts.timeout is not None:
            task.deadline = now + self._opts.timeout
            heapq.heappush(self._deadlines, (task.deadline, task.seq, task))
        self._in_flight[task.seq] = task
        return task, settled

    def _pull(self, now: float) -> tuple[Task | None, bool]:
        """Take up to one chunk of consecutive new items from the input."""
        start = self._next_index
        store = self._store
        if store is None:
            # Fast path: one C-level call per chunk, not a Python step per item.
            chunk: Sequence[Any]
            if self._range is not None:
                chunk = self._range[start : start + self._chunk]
            else:
                try:
                    chunk = list(itertools.islice(self._source, self._chunk))
                except Exception as exc:  # the user's iterator broke: the run must say so
                    return self._broken_source(exc)
            n = len(chunk)
            self._next_index += n
            self._outstanding += n
            settled = False
            if n < self._chunk:  # a chunk is short only at the end of the input
                self._exhausted = True
                settled = True  # the consumer may be waiting to learn the run is over
            return (Task(start, chunk, 1, next(self._seq)) if chunk else None), settled
        items: list[Any] = []
        settled = False
        try:
            for item in self._source:
                index = self._next_index
                self._next_index += 1
                self._outstanding += 1
                restored = store.restore(index, item)
                if restored is not None:
                    self._settle(Segment(index, 1, results=[restored]))
                    settled = True
                    if items:
                        break  # keep tasks consecutive: the restored item ends this one
                    start = self._next_index
                    if self._outstanding + self._chunk > self._max_in_flight:
                        return None, settled
                    continue
                items.append(item)
                if len(items) >= self._chunk:
                    break
            else:
                self._exhausted = True
                settled = True  # the consumer may be waiting to learn the run is over
        except Exception as exc:  # the user's iterator broke: the run must say so
            return self._broken_source(exc)
        if not items:
            return None, settled
        return Task(start, items, 1, next(self._seq)), settled

    def _broken_source(self, exc: Exception) -> tuple[None, bool]:
        self._exhausted = True
        self.fatal = exc
        self._stop_locked()
        return None, True

    def complete(self, task: Task, outcome: Outcome, at: int | None = None) -> None:
        """Record the outcome of ``len(outcome.values)`` consecutive items of ``task``.

        By default they are the next items after those already reported: a
        backend may report a task in parts (each part restarts the task's
        deadline, since the next item has just begun). ``at`` reports items
        ``at, at+1, ...`` instead, in any order, for a backend whose workers
        share a task (asyncio); each item must be reported exactly once.
        Reports of a task the engine has abandoned are ignored.
        """
        with self._lock:
            if task.closed:
                return
            retries_before = len(self._retry_heap)
            now = self.clock()
            n = len(outcome.values)
            self.items_run += n
            per_item = outcome.duration / n if n else 0.0
            if self._adaptive is not None and n:
                self._adapt(per_item)
            offset = task.done if at is None else at
            if outcome.errors is None:
                items = task.items if n == len(task.items) else task.items[offset : offset + n]
                self._settle(
                    Segment(task.start + offset, n, None, items, outcome.values, task.attempt,
                            per_item, outcome.worker, outcome.durations)
                )
            else:
                self._settle_with_errors(task, outcome, offset, per_item, now)
            task.done += n
            if task.done >= len(task.items):
                task.closed = True
                del self._in_flight[task.seq]
            elif task.deadline is not None and at is None:
                task.deadline = now + self._opts.timeout  # type: ignore[operator]
                heapq.heappush(self._deadlines, (task.deadline, task.seq, task))
            everyone = self._stopped or self._drained()
            wake = everyone or len(self._retry_heap) > retries_before
        self.on_settled()
        if wake:
            self.on_capacity(everyone)

    def _drained(self) -> bool:
        """No work is left to hand out and none can appear (lock held)."""
        return (self._exhausted and not self._in_flight and not self._held
                and not self._retry_heap)

    def _settle_with_errors(
        self, task: Task, outcome: Outcome, offset: int, per_item: float, now: float
    ) -> None:
        assert outcome.errors is not None
        run: list[ItemResult[Any]] = []
        durations = outcome.durations
        for k, value in enumerate(outcome.values):
            index = task.start + offset + k
            item = task.items[offset + k]
            error = outcome.errors.get(k)
            seconds = per_item if durations is None else durations[k]
            if error is None:
                run.append(ItemResult(index, item, True, value, None, task.attempt,
                                      seconds, outcome.worker))
                continue
            if run:
                self._settle(Segment(run[0].index, len(run), results=run))
                run = []
            self._fail(index, item, error, task.attempt, seconds, outcome.worker, now)
        if run:
            self._settle(Segment(run[0].index, len(run), results=run))

    def _fail(self, index: int, item: Any, error: BaseException, attempt: int,
              duration: float, worker: str, now: float) -> None:
        """An attempt failed: schedule a retry, or settle the failure."""
        delay = None if self._stopped else self._opts.retries.delay_before_retry(attempt, error)
        if delay is not None:
            retry = Task(index, [item], attempt + 1, next(self._seq))
            heapq.heappush(self._retry_heap, (now + delay, retry.seq, retry))
            return
        result: ItemResult[Any] = ItemResult(index, item, False, None, error, attempt,
                                             duration, worker)
        self._settle(Segment(index, 1, results=[result]))
        if self._opts.on_error == "all_or_nothing" and self.failure is None:
            self.failure = error
            self._stop_locked()

    def _settle(self, segment: Segment) -> None:
        if self._ordered:
            self._buffer[segment.start] = segment
        else:
            self._fifo.append(segment)

    def release(self, task: Task) -> None:
        """Give back the unreported items of ``task``, untouched, to run again.

        For a backend whose worker died: it first reports the item that was
        running (as failed with ``WorkerCrashed``) through ``complete``, then
        releases the rest, so no innocent item fails and none is lost.
        """
        with self._lock:
            if task.closed:
                return
            task.closed = True
            del self._in_flight[task.seq]
            if task.done < len(task.items):
                rest = Task(task.start + task.done, task.items[task.done :], task.attempt,
                            next(self._seq))
                self._held.appendleft(rest)
            everyone = self._drained()
        self.on_capacity(everyone)

    # ---------------------------------------------------------------- timeouts
    def next_deadline(self) -> float | None:
        """The earliest deadline of a running task (monotonic clock), or None."""
        with self._lock:
            heap = self._deadlines
            while heap and (heap[0][2].closed or heap[0][2].deadline != heap[0][0]):
                heapq.heappop(heap)
            return heap[0][0] if heap else None

    def expire(self) -> list[Task]:
        """Fail the running item of every task past its deadline.

        The item that was running fails with ``TimeoutError`` (or is retried);
        the task's later items, which never started, are queued again as they
        were. Returns the expired tasks: the caller must ``abandon`` them.
        """
        expired: list[Task] = []
        with self._lock:
            now = self.clock()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                deadline, _, task = heapq.heappop(heap)
                if task.closed or task.deadline != deadline:
                    continue
                task.closed = True
                del self._in_flight[task.seq]
                expired.append(task)
                k = task.done
                error = TimeoutError(
                    f"item {task.start + k} did not finish within timeout="
                    f"{self._opts.timeout}s (attempt {task.attempt})"
                )
                self._fail(task.start + k, task.items[k], error, task.attempt,
                           now - task.started, "", now)
                if k + 1 < len(task.items):
                    rest = Task(task.start + k + 1, task.items[k + 1 :], task.attempt,
                                next(self._seq))
                    self._held.appendleft(rest)
        if expired:
            self.on_settled()
            for _ in expired:
                self.on_capacity(False)
        return expired

    # ---------------------------------------------------------------- consumer
    def take(self) -> list[Segment]:
        """Settled segments ready for delivery (in input order when ordered)."""
        out: list[Segment] = []
        with self._lock:
            if self._ordered:
                buf = self._buffer
                nxt = self._next_deliver
                while nxt in buf:
                    seg = buf.pop(nxt)
                    out.append(seg)
                    nxt += seg.count
                self._next_deliver = nxt
            else:
                out.extend(self._fifo)
                self._fifo.clear()
            freed = sum(s.count for s in out)
            was_full = self._outstanding + self._chunk > self._max_in_flight
            self._outstanding -= freed
        if freed and was_full:
            self.on_capacity(False)
        return out

    def finished(self) -> bool:
        """True when every pulled item has been taken and no more will come."""
        with self._lock:
            idle = not self._in_flight and not self._held and not self._retry_heap
            if self._stopped:
                return not self._in_flight and not self._buffer and not self._fifo
            return self._exhausted and idle and self._outstanding == 0

    def stop(self) -> None:
        """Stop handing out work (Ctrl-C, or the consumer went away)."""
        with self._lock:
            self._stop_locked()
        self.on_capacity(True)

    def _stop_locked(self) -> None:
        self._stopped = True
        self._held.clear()
        self._retry_heap.clear()

    def fail_run(self, error: BaseException) -> None:
        """The run cannot go on (a backend broke): stop and report ``error``."""
        with self._lock:
            if self.fatal is None:
                self.fatal = error
            self._stop_locked()
        self.on_settled()
        self.on_capacity(True)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def undelivered(self) -> list[Segment]:
        """Everything settled but not taken, in index order (for partial reports)."""
        with self._lock:
            segs = list(self._buffer.values()) + list(self._fifo)
            self._buffer.clear()
            self._fifo.clear()
        segs.sort(key=lambda s: s.start)
        return segs


def _noop() -> None:
    return None


def _noop_wake(everyone: bool) -> None:
    return None

