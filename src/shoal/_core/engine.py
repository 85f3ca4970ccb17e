"""The engine: one scheduler for every backend.

Data flow (workers *pull*; nothing is pushed at a worker that is not ready)::

    Source ─pull (no lock held)─▶ acquire() ─Work(task)─▶ worker (thread / coroutine /
      ▲   │ store.restore(): done in an earlier run? → settled at once    process hub / dask)
      │   ▼                                                            │ Outcome
      │ rate limit (TokenBucket)      complete() ─ failed? ─▶ RetryPolicy ─▶ retry heap
      │                               lost() ─── worker died / report unreadable:
      │                                          re-run item by item (isolated)
      │                                          │ settled
      └── capacity (max_in_flight) ◀── take() ◀─┴─ ordered buffer or FIFO ─▶ consumer
                                        └─ settled since the last take ─▶ sinks (checkpoint)

``acquire`` answers with a named value: ``Work(task)``, ``Wait(seconds)``
(``WAIT_FOR_SIGNAL``: until woken) or ``DONE``; the engine never sleeps, and
each kind of worker waits in its own way. Two callbacks connect it to the
rest, both set by the run (``bind``) and called without the lock held:
``wake_workers(everyone)`` (work may be available) and ``wake_consumer()``
(results settled, a deadline moved closer, or the run is over).

Timeouts are the consumer's job: it waits at most until ``next_deadline()``
and calls ``expire()``, then tells the backend to ``abandon`` each expired
task. A deadline set after the consumer computed its wait (a retry, a new
task) wakes it, so no deadline goes unchecked.

``_lock`` guards every attribute below it in ``__init__``. Pulling from the
input happens outside it (``_pulling`` admits one puller at a time), so a
slow input never delays results that are ready or timeouts that are due.

Invariant: every input index ends in exactly one settled result (unless the
run is stopped). A task's items are consecutive indices; an item that will
be retried leaves its task and comes back as a one-item task; a task that
timed out fails the item that was running and re-queues the ones after it,
untouched; a task whose worker was lost is re-run item by item.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shoal._core.calling import Outcome
from shoal._core.errors import WorkerCrashed, add_note
from shoal._core.options import Options
from shoal._core.results import ItemResult, Segment, starts_of
from shoal._core.source import Source
from shoal._policies.chunking import ChunkPolicy
from shoal._policies.rate import TokenBucket
from shoal._sinks.base import ResultStore


@dataclass(slots=True, eq=False)
class Task:
    """Consecutive items handed to one worker at once.

    ``done`` counts items already reported (a backend may report a chunk in
    several parts, in order, or out of order with ``complete(..., at=k)``);
    ``closed`` is set once the engine stops listening to it (settled,
    abandoned after a timeout, or lost). ``isolated``: a suspect of a lost
    chunk, to be run so that its own death is known exactly (the process
    backend reports it item by item; Dask quarantines it).
    """

    start: int
    items: Sequence[Any]  # a list; a range when the input is a range
    attempt: int
    seq: int
    isolated: bool = False
    started: float = 0.0
    deadline: float | None = None
    done: int = 0
    closed: bool = False

    @property
    def stop(self) -> int:
        return self.start + len(self.items)


# ------------------------------------------------------------------ answers
@dataclass(frozen=True, slots=True)
class Work:
    """Run this task, then ``complete`` it."""

    task: Task


@dataclass(frozen=True, slots=True)
class Wait:
    """Ask again after ``seconds``; ``math.inf``: when woken (``wake_workers``)."""

    seconds: float


class Done:
    """No more work will come: the worker may end."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


DONE: Final = Done()
WAIT_FOR_SIGNAL: Final = Wait(math.inf)
Answer = Work | Wait | Done


@dataclass(slots=True)
class Measured:
    """What successful items cost so far (the auto probe reads it)."""

    items: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    cpu_items: int = 0  # items whose outcome carried a CPU time
    waited: float = 0.0  # of the wall time: ready to run, but another had the CPU

    @property
    def per_item(self) -> float | None:
        """Seconds per successful item, once one has succeeded."""
        return self.wall / self.items if self.items else None


class Engine:
    """Scheduling state of one run. See the module docstring for the flow."""

    def __init__(
        self,
        source: Source,
        options: Options,
        *,
        chunks: ChunkPolicy,
        window: Callable[[int], int],
        store: ResultStore | None = None,
        total: int | None = None,
        track_settled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._source = source
        self._opts = options
        self._store = store
        self.total = total  # the input's length, when known
        self._track = track_settled  # keep what settles for the sinks (checkpoint, progress)
        self.clock = clock
        self._epoch = time.time() - clock()  # clock() + _epoch: seconds since the epoch
        self._bucket = TokenBucket(options.rate, clock()) if options.rate else None
        self._seq = itertools.count()
        self.wake_workers: Callable[[bool], None] = _ignore_wake
        self.wake_consumer: Callable[[], None] = _nothing
        # The lock guards everything below.
        self._chunks = chunks
        self._window = window
        self._chunk = chunks.size
        self._max_in_flight = max(window(chunks.size), chunks.size)
        self._next_index = 0  # next input index to pull
        self._exhausted = False
        self._pulling = False  # a thread is pulling from the source (outside the lock)
        self._starved = False  # the input had nothing ready; input_ready() clears it
        # input_ready() calls so far, and their count when the running pull began:
        # a pull that found nothing while input_ready() ran is not starved.
        self._ready_calls = 0
        self._ready_at_pull = 0
        self._budget: int | None = None  # new items that may still be handed out (probe)
        self._held: deque[Task] = deque()  # released, isolated or extra pulled: run these first
        self._retry_heap: list[tuple[float, int, Task]] = []
        self._in_flight: dict[int, Task] = {}
        self._deadlines: list[tuple[float, int, Task]] = []  # lazy: stale entries skipped
        self._armed = math.inf  # the deadline the consumer waits for
        self._outstanding = 0  # items pulled and not yet taken by the consumer
        self._ordered = options.ordered
        self._buffer: dict[int, Segment] = {}  # ordered: first index -> segment
        self._fifo: deque[Segment] = deque()  # unordered
        self._fresh: list[Segment] = []  # settled since the last take (for the sinks)
        self._next_deliver = 0
        self._stopped = False
        self.measured = Measured()
        self.items_run = 0  # items reported by workers (not restored ones)
        self.attempts_ended = 0  # attempts that ended: reported, timed out or lost with a worker
        self.crashes = 0  # workers that died with a task (lost() with WorkerCrashed)
        self.failure: BaseException | None = None  # all_or_nothing: the first error
        self.failure_index = -1  # ... and its item's index
        self.fatal: BaseException | None = None  # a backend broke: raised at once
        self.source_error: BaseException | None = None  # raised once what finished is delivered

    def bind(self, wake_workers: Callable[[bool], None], wake_consumer: Callable[[], None]) -> None:
        """Connect the engine to the backend's workers and to the consumer."""
        self.wake_workers = wake_workers
        self.wake_consumer = wake_consumer

    def set_chunks(self, chunks: ChunkPolicy, window: Callable[[int], int]) -> None:
        """Use another chunk policy and in-flight rule (``auto`` chose its backend)."""
        with self._lock:
            self._chunks = chunks
            self._window = window
            self._chunk = chunks.size
            self._max_in_flight = max(window(chunks.size), chunks.size)

    def set_chunk(self, size: int) -> None:
        """Use chunks of ``size`` items (a backend that plans its own, Dask)."""
        with self._lock:
            self._chunk = max(1, size)
            self._max_in_flight = max(self._window(self._chunk), self._chunk)

    def limit(self, items: int | None) -> None:
        """Hand out at most ``items`` more new items (None: no limit)."""
        with self._lock:
            self._budget = items

    @property
    def chunk(self) -> int:
        return self._chunk

    @property
    def pulled(self) -> int:
        """Input items pulled so far."""
        return self._next_index

    @property
    def exhausted(self) -> bool:
        """The input has ended."""
        return self._exhausted

    @property
    def busy(self) -> bool:
        """A task is running, or the input is being pulled."""
        with self._lock:
            return bool(self._in_flight) or self._pulling

    @property
    def stopped(self) -> bool:
        """No more work is handed out (read without the lock: a worker's hint)."""
        return self._stopped

    def to_epoch(self, t: float) -> float:
        return t + self._epoch

    # ----------------------------------------------------------------- workers
    def acquire(self) -> Answer:
        """The next thing for a free worker to do (see the module docstring)."""
        wake_consumer = False
        while True:
            with self._lock:
                answer, pull = self._next_locked(self.clock())
                if isinstance(answer, Work) and answer.task.deadline is not None \
                        and answer.task.deadline < self._armed:
                    wake_consumer = True
            if not pull:
                break
            if self._pull(pull):
                wake_consumer = True
        if wake_consumer:
            self.wake_consumer()
        if answer is DONE:
            self.wake_workers(True)  # the run is over: let waiting workers end too
        return answer

    def _next_locked(self, now: float) -> tuple[Answer, int]:
        """What to do; or (_, n): pull up to ``n`` new items first (outside the lock)."""
        if self._stopped:
            return DONE, 0
        task: Task | None = None
        if self._held:
            task = self._held.popleft()
        elif self._retry_heap and self._retry_heap[0][0] <= now:
            task = heapq.heappop(self._retry_heap)[2]
        elif self._can_pull():
            n = self._chunk if self._budget is None else min(self._chunk, self._budget)
            self._pulling = True
            self._ready_at_pull = self._ready_calls
            return WAIT_FOR_SIGNAL, n
        if task is None:
            if self._retry_heap:
                return Wait(self._retry_heap[0][0] - now), 0
            if self._drained():
                return DONE, 0
            return WAIT_FOR_SIGNAL, 0
        return self._dispatch(task, now), 0

    def _can_pull(self) -> bool:
        return (not self._exhausted and not self._pulling and not self._starved
                and self._budget != 0 and self._outstanding + self._chunk <= self._max_in_flight)

    def _dispatch(self, task: Task, now: float) -> Answer:
        if self._bucket is not None:
            wait = self._bucket.try_take(len(task.items) - task.done, now)
            if wait > 0:
                self._held.appendleft(task)
                return Wait(wait)
        task.started = now
        if self._opts.timeout is not None:
            task.deadline = now + self._opts.timeout
            heapq.heappush(self._deadlines, (task.deadline, task.seq, task))
        self._in_flight[task.seq] = task
        return Work(task)

    def _pull(self, n: int) -> bool:
        """Pull up to ``n`` items (no lock held) and queue tasks of them.

        Returns whether the consumer must look (results restored, input ended).
        """
        # The user's iterator may raise: its error is raised once what was
        # pulled before it has run and been delivered.
        items, exhausted, error = self._source.pull(n)
        try:
            restored = self._restore(items) if self._store is not None and items else None
        except Exception as exc:  # the checkpoint refuses (another job's, damaged, untrusted)
            with self._lock:
                self._pulling = False
                if self.fatal is None:
                    self.fatal = exc
                self._stop_locked()
            self.wake_workers(True)
            return True
        with self._lock:
            self._pulling = False
            if self._stopped:
                return True
            start = self._next_index
            self._next_index += len(items)
            self._outstanding += len(items)
            if self._budget is not None:  # items that will run; restored ones cost nothing
                self._budget = max(0, self._budget - len(items) + len(restored or ()))
            if error is not None and self.source_error is None:
                self.source_error = error
            self._exhausted = exhausted
            # Starved until input_ready(), unless it was called during this pull:
            # its wake-up has come and gone, so nobody else would pull again.
            self._starved = (not items and not exhausted
                             and self._ready_calls == self._ready_at_pull)
            self._held.extend(self._tasks(start, items, restored))
            for result in (restored or {}).values():
                self._settle(Segment(result.index, 1, results=[result]))
            more = len(self._held) > 1 or self._can_pull()
        if more:
            self.wake_workers(False)  # pass the baton: there is more to do
        # The consumer looks when results were restored or the input ended
        # (it may be waiting to learn that the run is over).
        return bool(restored) or exhausted

    def _restore(self, items: Sequence[Any]) -> dict[int, ItemResult[Any]]:
        """Results an earlier run stored for these items (index -> result)."""
        assert self._store is not None
        start = self._next_index  # only this thread pulls: the indices are ours
        found: dict[int, ItemResult[Any]] = {}
        for k, item in enumerate(items):
            result = self._store.restore(start + k, item)
            if result is not None:
                found[start + k] = result
        return found

    def _tasks(self, start: int, items: Sequence[Any],
               restored: dict[int, ItemResult[Any]] | None) -> list[Task]:
        """Tasks of consecutive pulled items that still have to run."""
        if not items:
            return []
        if not restored:
            return [Task(start, items, 1, next(self._seq))]
        tasks: list[Task] = []
        run_start: int | None = None
        for k in range(len(items) + 1):
            if k < len(items) and start + k not in restored:
                if run_start is None:
                    run_start = k
                continue
            if run_start is not None:
                tasks.append(Task(start + run_start, items[run_start:k], 1, next(self._seq)))
                run_start = None
        return tasks

    def complete(self, task: Task, outcome: Outcome, at: int | None = None) -> None:
        """Record the outcome of ``len(outcome.values)`` consecutive items of ``task``.

        By default they are the next items after those already reported: a
        backend may report a task in parts (each part restarts the task's
        deadline, since the next item has just begun). ``at`` reports items
        ``at, at+1, ...`` instead, in any order, for a backend whose workers
        share a task (asyncio); each item must be reported exactly once.
        ``outcome.stopped``: the worker stopped early; the unreported rest of
        the task goes back to be run (unless the run has stopped).
        Reports of a task the engine no longer listens to are ignored.
        """
        with self._lock:
            if task.closed:
                return
            retries_before = len(self._retry_heap)
            now = self.clock()
            n = len(outcome.values)
            self.items_run += n
            self.attempts_ended += n
            per_item = outcome.duration / n if n else 0.0
            self._measure(outcome, n)
            offset = task.done if at is None else at
            ended = self.to_epoch(now)
            if outcome.errors is None:
                items = task.items if n == len(task.items) else task.items[offset : offset + n]
                self._settle(
                    Segment(task.start + offset, n, None, items, outcome.values, task.attempt,
                            per_item, outcome.worker, outcome.durations, ended)
                )
            else:
                self._settle_with_errors(task, outcome, offset, per_item, now)
            task.done += n
            if task.done >= len(task.items):
                self._close(task)
            elif outcome.stopped and at is None:
                self._close(task)
                if not self._stopped:
                    self._held.appendleft(self._rest(task, task.done))
            elif task.deadline is not None and at is None:
                task.deadline = now + self._opts.timeout  # type: ignore[operator]
                heapq.heappush(self._deadlines, (task.deadline, task.seq, task))
            everyone = self._stopped or self._drained()
            wake = everyone or len(self._retry_heap) > retries_before or outcome.stopped
        self.wake_consumer()
        if wake:
            self.wake_workers(everyone)

    def _measure(self, outcome: Outcome, n: int) -> None:
        """Feed successful items' time to the chunk policy and the probe's tally."""
        errors = outcome.errors
        if errors is None:
            ok, seconds = n, outcome.duration
        elif outcome.durations is not None:
            ok = n - len(errors)
            seconds = sum(d for k, d in enumerate(outcome.durations) if k not in errors)
        else:
            return  # a failure's time is no sample, and this one cannot be told apart
        if ok <= 0:
            return
        m = self.measured
        m.items += ok
        m.wall += seconds
        if outcome.cpu is not None and errors is None:
            m.cpu += outcome.cpu
            m.cpu_items += ok
            m.waited += outcome.waited or 0.0
        if self._chunks.observe(ok, seconds, self._next_index, outcome.item_bytes):
            self._chunk = self._chunks.size
            self._max_in_flight = max(self._window(self._chunk), self._chunk)

    def _close(self, task: Task) -> None:
        task.closed = True
        self._in_flight.pop(task.seq, None)

    def _rest(self, task: Task, k: int) -> Task:
        """A new task of ``task``'s items from position ``k`` on, untouched."""
        return Task(task.start + k, task.items[k:], task.attempt, next(self._seq), task.isolated)

    def _drained(self) -> bool:
        """No work is left to hand out and none can appear (lock held)."""
        return (self._exhausted and not self._pulling and not self._in_flight
                and not self._held and not self._retry_heap)

    def _settle_with_errors(
        self, task: Task, outcome: Outcome, offset: int, per_item: float, now: float
    ) -> None:
        assert outcome.errors is not None
        durations = outcome.durations or [per_item] * len(outcome.values)
        starts = starts_of(self.to_epoch(now), durations)
        run: list[ItemResult[Any]] = []
        for k, value in enumerate(outcome.values):
            index = task.start + offset + k
            item = task.items[offset + k]
            error = outcome.errors.get(k)
            if error is None:
                run.append(ItemResult(index, item, True, value, None, task.attempt,
                                      durations[k], outcome.worker, False, starts[k]))
                continue
            if run:
                self._settle(Segment(run[0].index, len(run), results=run))
                run = []
            self._fail(index, item, error, task.attempt, durations[k], outcome.worker, now,
                       starts[k])
        if run:
            self._settle(Segment(run[0].index, len(run), results=run))

    def _fail(self, index: int, item: Any, error: BaseException, attempt: int,
              duration: float, worker: str, now: float, started: float) -> None:
        """An attempt failed: schedule a retry, or settle the failure."""
        delay: float | None = None
        if not self._stopped:
            try:
                delay = self._opts.retries.delay_before_retry(attempt, error)
            except Exception as exc:  # the user's retry predicate raised: the item fails with it
                add_note(exc, f"shoal: raised by the retry policy while deciding whether to "
                              f"retry item {index} after {type(error).__name__}: {error}")
                exc.__context__ = error
                error, delay = exc, None
        if delay is not None:
            retry = Task(index, [item], attempt + 1, next(self._seq))
            heapq.heappush(self._retry_heap, (now + delay, retry.seq, retry))
            return
        result: ItemResult[Any] = ItemResult(index, item, False, None, error, attempt,
                                             duration, worker, False, started)
        self._settle(Segment(index, 1, results=[result]))
        if self._opts.on_error == "all_or_nothing" and self.failure is None:
            self.failure, self.failure_index = error, index
            self._stop_locked()

    def _settle(self, segment: Segment) -> None:
        if self._ordered:
            self._buffer[segment.start] = segment
        else:
            self._fifo.append(segment)
        if self._track:
            self._fresh.append(segment)

    def release(self, task: Task) -> None:
        """Give back the unreported items of ``task``, untouched, to run again
        (a chunk taken back from a busy worker for an idle one)."""
        with self._lock:
            if task.closed:
                return
            self._close(task)
            if task.done < len(task.items):
                self._held.appendleft(self._rest(task, task.done))
            everyone = self._drained()
        self.wake_workers(everyone)

    def lost(self, task: Task, error: BaseException, *, exact: bool) -> None:
        """The worker running ``task`` died, or its report could not be decoded.

        The crash-isolation rule, the same for every backend: when the backend
        knows which item was running (``exact``: it reported item by item, or
        the item was isolated), that item fails with ``error`` (an attempt:
        the retry policy applies) and the items after it run again untouched.
        Otherwise every unreported item runs again alone, as an isolated
        one-item task, without counting an attempt, so that only the guilty
        item fails when it brings its worker down again.
        """
        with self._lock:
            if task.closed:
                return
            self._close(task)
            if isinstance(error, WorkerCrashed):
                self.crashes += 1
            now = self.clock()
            k = task.done
            if exact or (len(task.items) - k == 1 and task.isolated):
                self.attempts_ended += 1
                self._fail(task.start + k, task.items[k], error, task.attempt,
                           now - task.started, "", now, self.to_epoch(task.started))
                if k + 1 < len(task.items) and not self._stopped:
                    self._held.appendleft(self._rest(task, k + 1))
            elif not self._stopped:
                suspects = [Task(task.start + j, task.items[j : j + 1], task.attempt,
                                 next(self._seq), True) for j in range(k, len(task.items))]
                self._held.extendleft(reversed(suspects))
            everyone = self._stopped or self._drained()
        self.wake_consumer()
        self.wake_workers(everyone)

    # ---------------------------------------------------------------- timeouts
    def next_deadline(self) -> float | None:
        """The earliest deadline of a running task (engine clock), or None.

        The consumer waits until then; a task that gets an earlier deadline
        afterwards wakes it (``wake_consumer``).
        """
        with self._lock:
            heap = self._deadlines
            while heap and (heap[0][2].closed or heap[0][2].deadline != heap[0][0]):
                heapq.heappop(heap)
            self._armed = heap[0][0] if heap else math.inf
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
                self._close(task)
                expired.append(task)
                self.attempts_ended += 1
                k = task.done
                error = TimeoutError(
                    f"item {task.start + k} did not finish within timeout="
                    f"{self._opts.timeout}s (attempt {task.attempt})"
                )
                began = deadline - self._opts.timeout  # type: ignore[operator]
                self._fail(task.start + k, task.items[k], error, task.attempt, now - began, "",
                           now, self.to_epoch(began))
                if k + 1 < len(task.items) and not self._stopped:
                    self._held.appendleft(self._rest(task, k + 1))
            everyone = self._stopped or self._drained()
        if expired:
            self.wake_consumer()
            for _ in expired:
                self.wake_workers(everyone)
        return expired

    # ---------------------------------------------------------------- consumer
    def take(self) -> list[Segment]:
        """Settled segments ready for delivery (in input order when ordered).

        They still count as in flight until the consumer says it has handed
        them over (``free``): an item is between the input and the caller
        until the caller has it.
        """
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
        return out

    def free(self, count: int) -> None:
        """The caller has ``count`` more delivered items: make room for more input."""
        with self._lock:
            was_full = self._outstanding + self._chunk > self._max_in_flight
            self._outstanding -= count
        if count and was_full:
            self.wake_workers(False)

    def take_settled(self) -> list[Segment]:
        """Segments settled since the last call, in the order they finished
        (for sinks that keep results as they finish, whatever the delivery order)."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
        return fresh

    def finished(self) -> bool:
        """True when every pulled item has been taken and no more will come."""
        with self._lock:
            if self._stopped:
                return not self._in_flight and not self._buffer and not self._fifo
            return self._drained() and self._outstanding == 0

    def stop(self) -> None:
        """Stop handing out work (Ctrl-C, or the consumer went away)."""
        with self._lock:
            self._stop_locked()
        self.wake_workers(True)

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
        self.wake_consumer()
        self.wake_workers(True)

    def close_source(self) -> None:
        """The run is over: stop reading the input."""
        self._source.close()

    def input_ready(self) -> None:
        """The input has items again (a reader thread got some): ask again."""
        with self._lock:
            self._starved = False
            self._ready_calls += 1
        self.wake_workers(False)
        self.wake_consumer()  # an inline backend's worker is the consumer

    def undelivered(self) -> list[Segment]:
        """Everything settled but not taken, in index order (for partial reports)."""
        with self._lock:
            segs = list(self._buffer.values()) + list(self._fifo)
            self._buffer.clear()
            self._fifo.clear()
        segs.sort(key=lambda s: s.start)
        return segs


def _nothing() -> None:
    return None


def _ignore_wake(everyone: bool) -> None:
    return None
