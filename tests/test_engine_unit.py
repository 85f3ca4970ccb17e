"""The scheduler state machine, driven by hand with a fake clock (no threads, no sleep)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shoal._core.calling import Outcome
from shoal._core.engine import WAIT_FOR_SIGNAL, Engine, Task
from shoal._core.options import Options
from shoal._policies.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(items: Any, clock: Clock, chunk: int = 1, max_in_flight: int = 64,
         **opts: Any) -> Engine:
    options = Options.from_kwargs("collect_errors", opts)
    return Engine(iter(items), options, chunk_size=chunk, max_in_flight=max_in_flight,
                  clock=clock)


def ok(values: list[Any]) -> Outcome:
    return Outcome(values, None, 0.01 * len(values), "w")


def results(engine: Engine) -> list[Any]:
    return [r for seg in engine.take() for r in seg.item_results()]


def test_out_of_order_completion_is_delivered_in_order() -> None:
    eng = make(range(3), Clock())
    tasks = [eng.acquire() for _ in range(3)]
    assert all(isinstance(t, Task) for t in tasks)
    t0, t1, t2 = tasks  # type: ignore[misc]
    eng.complete(t2, ok([20]))
    eng.complete(t1, ok([10]))
    assert eng.take() == []  # index 0 is not done yet
    eng.complete(t0, ok([0]))
    assert [r.value for r in results(eng)] == [0, 10, 20]
    assert eng.acquire() is None and eng.finished()


def test_parts_of_a_task_reported_out_of_order_are_delivered_in_order() -> None:
    """complete(..., at=k): workers that share a task report runs in any order."""
    eng = make(range(6), Clock(), chunk=6)
    task = eng.acquire()
    assert isinstance(task, Task)
    eng.complete(task, Outcome([4, 5], None, 0.5, "w", [0.2, 0.3]), at=4)
    assert eng.take() == []
    failed = ValueError("item 1")
    eng.complete(task, Outcome([0, None], {1: failed}, 0.2, "w", [0.1, 0.1]), at=0)
    first = results(eng)
    assert [(r.index, r.ok) for r in first] == [(0, True), (1, False)]
    assert first[1].error is failed
    assert not task.closed and eng.acquire() == WAIT_FOR_SIGNAL
    eng.complete(task, Outcome([2, 3], None, 0.4, "w", [0.15, 0.25]), at=2)
    rest = results(eng)
    assert [(r.index, r.item, r.value) for r in rest] == [(i, i, i) for i in range(2, 6)]
    assert [r.duration for r in rest] == [0.15, 0.25, 0.2, 0.3]  # each its own, not the mean
    assert task.closed and eng.acquire() is None and eng.finished()


@pytest.mark.parametrize(("workers", "cap"), [(1, 16384), (4, 4096), (32, 1024)])
def test_adaptive_chunks_share_one_cap_among_the_workers(workers: int, cap: int) -> None:
    """Tiny items grow chunks, but chunks x workers stays bounded (memory)."""
    eng = make(range(10**6), Clock())
    eng.adapt_chunks(0.002, workers)
    first = eng.acquire()
    assert isinstance(first, Task) and len(first.items) == 1
    eng.complete(first, Outcome([0], None, 1e-8, "w"))  # 10 ns an item: wants 200,000
    eng.take()
    grown = eng.acquire()
    assert isinstance(grown, Task)
    assert len(grown.items) == cap


def test_chunks_are_consecutive_and_bounded() -> None:
    eng = make(range(10), Clock(), chunk=4)
    sizes = []
    while isinstance(task := eng.acquire(), Task):
        sizes.append((task.start, len(task.items)))
    assert sizes == [(0, 4), (4, 4), (8, 2)]


def test_max_in_flight_stops_pulling_until_the_consumer_takes() -> None:
    pulled: list[int] = []

    def source() -> Any:
        for i in range(100):
            pulled.append(i)
            yield i

    eng = make(source(), Clock(), chunk=1, max_in_flight=3)
    tasks = [eng.acquire() for _ in range(3)]
    assert eng.acquire() == WAIT_FOR_SIGNAL
    assert len(pulled) == 3
    for t in tasks:
        eng.complete(t, ok([1]))  # type: ignore[arg-type]
    assert eng.acquire() == WAIT_FOR_SIGNAL  # settled but not yet taken
    woken: list[bool] = []
    eng.on_capacity = woken.append
    assert len(results(eng)) == 3
    assert woken == [False]
    assert isinstance(eng.acquire(), Task)


def test_failure_is_retried_after_the_policy_delay() -> None:
    clock = Clock()
    eng = make(["a"], clock, retries=RetryPolicy(retries=1, backoff=2.0, jitter=0))
    task = eng.acquire()
    assert isinstance(task, Task)
    eng.complete(task, Outcome([None], {0: ValueError("boom")}, 0.1, "w"))
    assert eng.take() == []
    assert eng.acquire() == pytest.approx(2.0)  # wait before asking again
    clock.now = 2.0
    retry = eng.acquire()
    assert isinstance(retry, Task) and retry.attempt == 2 and retry.items == ["a"]
    eng.complete(retry, ok(["A"]))
    [r] = results(eng)
    assert (r.ok, r.value, r.attempts) == (True, "A", 2)


def test_failure_inside_a_chunk_splits_it() -> None:
    eng = make(range(4), Clock(), chunk=4)
    task = eng.acquire()
    assert isinstance(task, Task)
    eng.complete(task, Outcome([0, None, 2, 3], {1: KeyError("k")}, 0.4, "w"))
    got = results(eng)
    assert [(r.index, r.ok) for r in got] == [(0, True), (1, False), (2, True), (3, True)]
    assert isinstance(got[1].error, KeyError)


def test_timeout_fails_the_running_item_and_requeues_the_rest() -> None:
    clock = Clock()
    eng = make(range(3), clock, chunk=3, timeout=1.0)
    task = eng.acquire()
    assert isinstance(task, Task)
    eng.complete(task, ok([0]))  # first item finished: deadline restarts
    clock.now = 0.5
    assert eng.expire() == []
    assert eng.next_deadline() == pytest.approx(1.0)
    clock.now = 1.5
    assert eng.expire() == [task]
    rest = eng.acquire()
    assert isinstance(rest, Task) and rest.start == 2 and rest.items == [2]
    eng.complete(task, ok([1]))  # the abandoned worker reports late: ignored
    eng.complete(rest, ok([2]))
    got = results(eng)
    assert [r.ok for r in got] == [True, False, True]
    assert isinstance(got[1].error, TimeoutError)
    assert "timeout=1.0" in str(got[1].error)


def test_release_gives_back_unstarted_items() -> None:
    eng = make(range(3), Clock(), chunk=3)
    task = eng.acquire()
    assert isinstance(task, Task)
    eng.complete(task, Outcome([None], {0: RuntimeError("crash")}, 0.1, "w"))
    eng.release(task)
    again = eng.acquire()
    assert isinstance(again, Task) and again.start == 1 and again.items == [1, 2]


def test_all_or_nothing_stops_handing_out_work() -> None:
    eng = make(range(10), Clock(), on_error="all_or_nothing")
    first = eng.acquire()
    second = eng.acquire()
    assert isinstance(first, Task) and isinstance(second, Task)
    eng.complete(first, Outcome([None], {0: ValueError("x")}, 0.0, "w"))
    assert isinstance(eng.failure, ValueError)
    assert eng.acquire() is None
    eng.complete(second, ok([1]))  # what was running still settles
    assert [(r.index, r.ok) for r in results(eng)] == [(0, False), (1, True)]
    assert eng.finished()


def test_rate_limit_spaces_tasks_without_sleeping() -> None:
    clock = Clock()
    eng = make(range(5), clock, rate=(2, 1))
    assert isinstance(eng.acquire(), Task)
    wait = eng.acquire()
    assert isinstance(wait, float) and wait == pytest.approx(0.5)
    clock.now = 0.5
    assert isinstance(eng.acquire(), Task)


def test_broken_source_stops_the_run() -> None:
    def source() -> Any:
        yield 1
        raise OSError("gone")

    eng = make(source(), Clock(), chunk=5)
    assert eng.acquire() is None
    assert isinstance(eng.fatal, OSError)


def test_wait_for_signal_is_infinite() -> None:
    assert math.isinf(WAIT_FOR_SIGNAL)


def test_a_range_is_sliced_into_range_chunks_and_failed_items_keep_their_value() -> None:
    """A range input is never materialised: each task holds a slice of it."""
    options = Options.from_kwargs("collect_errors", {})
    eng = Engine(range(10, 20), options, chunk_size=4, max_in_flight=64, clock=Clock())
    tasks = [eng.acquire() for _ in range(3)]
    assert [t.items for t in tasks if isinstance(t, Task)] == [
        range(10, 14), range(14, 18), range(18, 20)]
    assert eng.exhausted and eng.acquire() == WAIT_FOR_SIGNAL  # all pulled, all in flight
    t0, t1, t2 = tasks  # type: ignore[misc]
    eng.complete(t0, ok([0, 1, 2, 3]))
    eng.complete(t1, Outcome([4, None, 6, 7], {1: ValueError("15")}, 0.04, "w"))
    eng.complete(t2, ok([8, 9]))
    got = results(eng)
    assert [r.item for r in got] == list(range(10, 20))
    assert [r.index for r in got if not r.ok] == [5] and got[5].item == 15
    assert eng.finished()
