"""The scheduler state machine, driven by hand with a fake clock (no sleep)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pytest

from shoal._backends._threads import ThreadBackend
from shoal._core.calling import Outcome
from shoal._core.engine import DONE, WAIT_FOR_SIGNAL, Answer, Engine, Task, Wait, Work
from shoal._core.errors import NotPicklable, WorkerCrashed
from shoal._core.options import Options
from shoal._core.source import IterSource, SliceSource, Source
from shoal._policies.chunking import ChunkPolicy
from shoal._policies.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def source_of(items: Iterable[Any]) -> Source:
    if type(items) in (range, list, tuple):
        return SliceSource(items)  # type: ignore[arg-type]
    return IterSource(items, lambda: None)


def make(items: Iterable[Any], clock: Clock, chunk: int = 1, max_in_flight: int = 64,
         chunks: ChunkPolicy | None = None, track: bool = False, **opts: Any) -> Engine:
    options = Options.from_kwargs("collect_errors", opts)
    policy = chunks or ChunkPolicy(None, workers=1, fixed=chunk)
    return Engine(source_of(items), options, chunks=policy, window=lambda c: max_in_flight,
                  track_settled=track, clock=clock)


def task_of(answer: Answer) -> Task:
    assert isinstance(answer, Work), answer
    return answer.task


def ok(values: list[Any]) -> Outcome:
    return Outcome(values, None, 0.01 * len(values), "w")


def results(engine: Engine) -> list[Any]:
    """Take what is deliverable and hand it over, as a consumer does."""
    segs = engine.take()
    engine.free(sum(s.count for s in segs))
    return [r for seg in segs for r in seg.item_results()]


def test_out_of_order_completion_is_delivered_in_order() -> None:
    eng = make(range(3), Clock())
    t0, t1, t2 = (task_of(eng.acquire()) for _ in range(3))
    eng.complete(t2, ok([20]))
    eng.complete(t1, ok([10]))
    assert eng.take() == []  # index 0 is not done yet
    eng.complete(t0, ok([0]))
    assert [r.value for r in results(eng)] == [0, 10, 20]
    assert eng.acquire() is DONE and eng.finished()


def test_settled_results_reach_the_sinks_as_they_finish_whatever_the_order() -> None:
    """A checkpoint records an item when it finishes, not when it is delivered."""
    eng = make(range(3), Clock(), track=True)
    t0, t1, t2 = (task_of(eng.acquire()) for _ in range(3))
    eng.complete(t2, ok([20]))
    eng.complete(t1, ok([10]))
    assert eng.take() == []  # delivery waits for index 0 ...
    fresh = [r.index for s in eng.take_settled() for r in s.item_results()]
    assert fresh == [2, 1]  # ... the sinks do not
    eng.complete(t0, ok([0]))
    assert [r.index for s in eng.take_settled() for r in s.item_results()] == [0]


def test_parts_of_a_task_reported_out_of_order_are_delivered_in_order() -> None:
    """complete(..., at=k): workers that share a task report runs in any order."""
    eng = make(range(6), Clock(), chunk=6)
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([4, 5], None, 0.5, "w", [0.2, 0.3]), at=4)
    assert eng.take() == []
    failed = ValueError("item 1")
    eng.complete(task, Outcome([0, None], {1: failed}, 0.2, "w", [0.1, 0.1]), at=0)
    first = results(eng)
    assert [(r.index, r.ok) for r in first] == [(0, True), (1, False)]
    assert first[1].error is failed
    assert not task.closed and eng.acquire() is WAIT_FOR_SIGNAL
    eng.complete(task, Outcome([2, 3], None, 0.4, "w", [0.15, 0.25]), at=2)
    rest = results(eng)
    assert [(r.index, r.item, r.value) for r in rest] == [(i, i, i) for i in range(2, 6)]
    assert [r.duration for r in rest] == [0.15, 0.25, 0.2, 0.3]  # each its own, not the mean
    assert task.closed and eng.acquire() is DONE and eng.finished()


def test_each_item_gets_a_start_time_counted_back_from_its_report() -> None:
    eng = make(range(3), Clock(), chunk=3)
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([0, 1, 2], None, 0.6, "w", [0.1, 0.2, 0.3]))
    got = results(eng)
    ends = [r.started + r.duration for r in got]
    assert ends[0] == pytest.approx(got[1].started) and ends[1] == pytest.approx(got[2].started)
    assert got[0].started > 1e9  # epoch seconds


def test_chunks_are_consecutive_and_bounded() -> None:
    eng = make(range(10), Clock(), chunk=4)
    sizes = []
    while isinstance(got := eng.acquire(), Work):
        sizes.append((got.task.start, len(got.task.items)))
    assert sizes == [(0, 4), (4, 4), (8, 2)]


def test_a_failed_item_is_no_timing_sample_for_the_chunk_size() -> None:
    """A bad record fails at once; counted, it would make the next chunk swallow the input."""
    chunks = ChunkPolicy(ThreadBackend.traits.chunking, workers=8, total=10_000)
    eng = make(range(10_000), Clock(), chunks=chunks, max_in_flight=10**6)
    first = task_of(eng.acquire())
    eng.complete(first, Outcome([None], {0: ValueError("bad record")}, 1e-7, "w"))
    assert eng.chunk == 1
    second = task_of(eng.acquire())
    eng.complete(second, ok([1]))  # 10 ms an item: chunks stay small
    assert eng.chunk == 1


def test_max_in_flight_stops_pulling_until_the_consumer_takes() -> None:
    pulled: list[int] = []

    def source() -> Any:
        for i in range(100):
            pulled.append(i)
            yield i

    eng = make(source(), Clock(), chunk=1, max_in_flight=3)
    tasks = [task_of(eng.acquire()) for _ in range(3)]
    assert eng.acquire() is WAIT_FOR_SIGNAL
    assert len(pulled) == 3
    for t in tasks:
        eng.complete(t, ok([1]))
    assert eng.acquire() is WAIT_FOR_SIGNAL  # settled but not yet taken
    woken: list[bool] = []
    eng.bind(woken.append, lambda: None)
    assert len(results(eng)) == 3
    assert woken == [False]
    assert isinstance(eng.acquire(), Work)


def test_failure_is_retried_after_the_policy_delay() -> None:
    clock = Clock()
    eng = make(["a"], clock, retries=RetryPolicy(retries=1, backoff=2.0, jitter=0))
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([None], {0: ValueError("boom")}, 0.1, "w"))
    assert eng.take() == []
    wait = eng.acquire()
    assert isinstance(wait, Wait) and wait.seconds == pytest.approx(2.0)
    clock.now = 2.0
    retry = task_of(eng.acquire())
    assert retry.attempt == 2 and list(retry.items) == ["a"]
    eng.complete(retry, ok(["A"]))
    [r] = results(eng)
    assert (r.ok, r.value, r.attempts) == (True, "A", 2)


def test_a_retry_predicate_that_raises_fails_the_item_with_its_exception() -> None:
    def predicate(error: BaseException) -> bool:
        raise LookupError("the predicate itself is broken")

    eng = make(["a", "b"], Clock(), retries=RetryPolicy(retries=2, predicate=predicate))
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([None], {0: ValueError("boom")}, 0.1, "w"))
    eng.complete(task_of(eng.acquire()), ok(["B"]))
    first, second = results(eng)
    assert isinstance(first.error, LookupError) and isinstance(first.error.__context__, ValueError)
    assert second.ok and eng.acquire() is DONE


def test_a_retry_of_a_timed_out_item_wakes_the_consumer_for_its_deadline() -> None:
    """The consumer computed its wait before the retry got a deadline: it must look again."""
    clock = Clock()
    eng = make(["hang"], clock, timeout=1.0, retries=RetryPolicy(retries=1, backoff=0, jitter=0))
    woken: list[str] = []
    eng.bind(lambda everyone: None, lambda: woken.append("consumer"))
    task_of(eng.acquire())
    assert eng.next_deadline() == pytest.approx(1.0)
    clock.now = 1.5
    assert len(eng.expire()) == 1  # fails attempt 1, schedules attempt 2
    assert eng.next_deadline() is None  # the consumer now waits without a deadline ...
    woken.clear()
    retry = task_of(eng.acquire())
    assert retry.attempt == 2 and woken == ["consumer"]  # ... so the new one wakes it
    assert eng.next_deadline() == pytest.approx(2.5)
    clock.now = 2.6
    assert eng.expire() == [retry]
    [r] = results(eng)
    assert isinstance(r.error, TimeoutError) and r.attempts == 2


def test_failure_inside_a_chunk_splits_it() -> None:
    eng = make(range(4), Clock(), chunk=4)
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([0, None, 2, 3], {1: KeyError("k")}, 0.4, "w"))
    got = results(eng)
    assert [(r.index, r.ok) for r in got] == [(0, True), (1, False), (2, True), (3, True)]
    assert isinstance(got[1].error, KeyError)


def test_timeout_fails_the_running_item_and_requeues_the_rest() -> None:
    clock = Clock()
    eng = make(range(3), clock, chunk=3, timeout=1.0)
    task = task_of(eng.acquire())
    eng.complete(task, ok([0]))  # first item finished: deadline restarts
    clock.now = 0.5
    assert eng.expire() == []
    assert eng.next_deadline() == pytest.approx(1.0)
    clock.now = 1.5
    assert eng.expire() == [task]
    rest = task_of(eng.acquire())
    assert rest.start == 2 and list(rest.items) == [2]
    eng.complete(task, ok([1]))  # the abandoned worker reports late: ignored
    eng.complete(rest, ok([2]))
    got = results(eng)
    assert [r.ok for r in got] == [True, False, True]
    assert isinstance(got[1].error, TimeoutError)
    assert "timeout=1.0" in str(got[1].error)


def test_release_gives_back_unstarted_items() -> None:
    eng = make(range(3), Clock(), chunk=3)
    task = task_of(eng.acquire())
    eng.complete(task, ok([0]))
    eng.release(task)
    again = task_of(eng.acquire())
    assert again.start == 1 and list(again.items) == [1, 2]


def test_a_stopped_outcome_gives_the_rest_back() -> None:
    eng = make(range(4), Clock(), chunk=4, retries=1)
    task = task_of(eng.acquire())
    eng.complete(task, Outcome([0, None], {1: ValueError("x")}, 0.1, "w", stopped=True))
    rest = task_of(eng.acquire())
    assert (rest.start, list(rest.items)) == (2, [2, 3])


def test_a_lost_chunk_reruns_item_by_item_without_counting_an_attempt() -> None:
    """The crash-isolation rule: only the item that kills its worker again fails."""
    eng = make(range(4), Clock(), chunk=4)
    task = task_of(eng.acquire())
    eng.complete(task, ok([0]))
    eng.lost(task, WorkerCrashed("died"), exact=False)
    suspects = [task_of(eng.acquire()) for _ in range(3)]
    assert [(t.start, len(t.items), t.isolated, t.attempt) for t in suspects] == [
        (1, 1, True, 1), (2, 1, True, 1), (3, 1, True, 1)]
    eng.complete(suspects[0], ok([1]))
    eng.lost(suspects[1], WorkerCrashed("died again"), exact=False)  # isolated: it is the one
    eng.complete(suspects[2], ok([3]))
    got = results(eng)
    assert [(r.index, r.ok) for r in got] == [(0, True), (1, True), (2, False), (3, True)]
    assert isinstance(got[2].error, WorkerCrashed) and got[2].attempts == 1
    assert eng.crashes == 2 and eng.finished()


def test_an_exact_loss_fails_the_running_item_and_keeps_the_rest_whole() -> None:
    eng = make(range(3), Clock(), chunk=3)
    task = task_of(eng.acquire())
    eng.lost(task, NotPicklable("result 0 does not unpickle"), exact=True)
    rest = task_of(eng.acquire())
    assert (rest.start, list(rest.items), rest.isolated) == (1, [1, 2], False)
    assert eng.crashes == 0  # not a crash: the probe must not read it as one


def test_all_or_nothing_stops_handing_out_work() -> None:
    eng = make(range(10), Clock(), on_error="all_or_nothing")
    first = task_of(eng.acquire())
    second = task_of(eng.acquire())
    eng.complete(first, Outcome([None], {0: ValueError("x")}, 0.0, "w"))
    assert isinstance(eng.failure, ValueError)
    assert eng.acquire() is DONE
    eng.complete(second, ok([1]))  # what was running still settles
    assert [(r.index, r.ok) for r in results(eng)] == [(0, False), (1, True)]
    assert eng.finished()


def test_rate_limit_spaces_tasks_without_sleeping() -> None:
    clock = Clock()
    eng = make(range(5), clock, rate=(2, 1))
    assert isinstance(eng.acquire(), Work)
    wait = eng.acquire()
    assert isinstance(wait, Wait) and wait.seconds == pytest.approx(0.5)
    clock.now = 0.5
    assert isinstance(eng.acquire(), Work)


def test_a_broken_source_delivers_what_it_gave_then_raises() -> None:
    def source() -> Any:
        yield 1
        yield 2
        raise OSError("gone")

    eng = make(source(), Clock(), chunk=5)
    task = task_of(eng.acquire())
    assert list(task.items) == [1, 2] and eng.exhausted
    assert isinstance(eng.source_error, OSError) and eng.fatal is None
    eng.complete(task, ok([10, 20]))
    assert [r.value for r in results(eng)] == [10, 20]
    assert eng.finished()


def test_pulling_a_blocked_source_holds_no_lock() -> None:
    """While one worker waits on the input, results are settled and taken."""
    gate = threading.Event()
    in_next = threading.Event()

    def source() -> Any:
        yield 0
        in_next.set()
        gate.wait(10)
        yield 1

    eng = make(source(), Clock(), chunk=1)
    first = task_of(eng.acquire())
    puller = threading.Thread(target=eng.acquire)
    puller.start()
    assert in_next.wait(10)
    eng.complete(first, ok([0]))  # would block on the engine's lock if the pull held it
    assert [r.value for r in results(eng)] == [0]
    gate.set()
    puller.join(10)
    assert not puller.is_alive()


def test_a_range_is_sliced_into_range_chunks_and_failed_items_keep_their_value() -> None:
    """A range input is never materialised: each task holds a slice of it."""
    eng = make(range(10, 20), Clock(), chunk=4)
    tasks = [task_of(eng.acquire()) for _ in range(3)]
    assert [t.items for t in tasks] == [range(10, 14), range(14, 18), range(18, 20)]
    assert eng.exhausted and eng.acquire() is WAIT_FOR_SIGNAL  # all pulled, all in flight
    t0, t1, t2 = tasks
    eng.complete(t0, ok([0, 1, 2, 3]))
    eng.complete(t1, Outcome([4, None, 6, 7], {1: ValueError("15")}, 0.04, "w"))
    eng.complete(t2, ok([8, 9]))
    got = results(eng)
    assert [r.item for r in got] == list(range(10, 20))
    assert [r.index for r in got if not r.ok] == [5] and got[5].item == 15
    assert eng.finished()


def test_a_store_that_refuses_a_row_ends_the_run_with_its_error() -> None:
    """A checkpoint of another job (or a tampered row) stops the run, never a worker."""

    class Refusing:
        def restore(self, index: int, item: Any) -> Any:
            raise LookupError(f"row {index} is not ours")

        def record(self, results: Any) -> None:
            return None

        def close(self) -> None:
            return None

    options = Options.from_kwargs("collect_errors", {})
    eng = Engine(SliceSource(range(3)), options, chunks=ChunkPolicy(None, workers=1),
                 window=lambda c: 64, store=Refusing(), clock=Clock())
    assert eng.acquire() is DONE
    assert isinstance(eng.fatal, LookupError) and eng.finished()
