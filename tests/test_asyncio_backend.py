"""What is particular to the asyncio backend: workers share a lot of items.

The engine hands out lots of up to ``LOT_MAX`` items; every free worker takes
the next item of the current lot, and finished items are reported as runs.
These tests pin what that must not change: items still run one per worker,
with the concurrency asked for; each keeps its own duration; a failure stops
handing out items; a lot reported out of order is delivered in order.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

import shoal


class Gauge:
    """Counts coroutines running at once."""

    def __init__(self) -> None:
        self.now = self.peak = self.started = 0

    async def __call__(self, delay: float) -> float:
        self.started += 1
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(delay)
        finally:
            self.now -= 1
        return delay


def test_workers_bound_the_concurrency_within_a_lot() -> None:
    gauge = Gauge()
    values = shoal.map(gauge, [0.01] * 50, backend="asyncio", workers=7)
    assert values == [0.01] * 50
    assert gauge.peak == 7


def test_a_lot_finished_out_of_order_is_delivered_in_order() -> None:
    rng = random.Random(7)
    delays = [rng.choice([0.0, 0.002, 0.02]) for _ in range(300)]

    async def echo(x: tuple[int, float]) -> int:
        await asyncio.sleep(x[1])
        return x[0]

    out = shoal.map(echo, list(enumerate(delays)), backend="asyncio", workers=50)
    assert out == list(range(300))


def test_each_item_keeps_its_own_duration() -> None:
    async def nap(x: float) -> float:
        await asyncio.sleep(x)
        return x

    report = shoal.run(nap, [0.0, 0.3, 0.0], backend="asyncio", workers=3)
    short, long, _ = (r.duration for r in report.results)
    assert long >= 0.3
    assert short < 0.3  # not the lot's average


def test_all_or_nothing_stops_handing_out_items() -> None:
    gauge = Gauge()

    async def fail_first(x: int) -> int:
        if x == 0:
            raise ValueError("item 0 is bad")
        await gauge(0.01)
        return x

    with pytest.raises(ValueError, match="item 0 is bad"):
        shoal.map(fail_first, range(2000), backend="asyncio", workers=4)
    assert gauge.started <= 3  # those already running when item 0 failed


def test_one_worker_starts_nothing_after_a_failure() -> None:
    """A failure is reported at once, not at the end of the loop's turn."""
    started: list[int] = []

    async def fail_on_negative(x: int) -> int:
        started.append(x)
        if x < 0:
            raise ValueError(f"negative {x}")
        return x

    with pytest.raises(ValueError, match="negative -1"):
        shoal.map(fail_on_negative, [1, -1, 2, 3], backend="asyncio", workers=1)
    assert started == [1, -1]


def test_failures_and_retries_inside_a_lot() -> None:
    seen: set[int] = set()

    async def flaky(x: int) -> int:
        await asyncio.sleep(0)
        if x % 3 == 0 and x not in seen:
            seen.add(x)
            raise ConnectionError(f"transient {x}")
        if x % 10 == 5:
            raise KeyError(x)
        return x

    report = shoal.run(flaky, range(40), backend="asyncio", workers=8,
                       retries=shoal.RetryPolicy(retries=1, backoff=0,
                                                 retry_on=(ConnectionError,)))
    assert [r.index for r in report.results] == list(range(40))
    failed = {r.index for r in report.failures}
    assert failed == {5, 15, 25, 35}
    assert all(isinstance(r.error, KeyError) for r in report.failures)
    assert {r.index: r.attempts for r in report.results if r.index % 3 == 0 and r.ok} == {
        i: 2 for i in range(0, 40, 3) if i % 10 != 5}


def test_a_base_exception_from_fn_ends_the_run() -> None:
    class Fatal(BaseException):
        pass

    async def fatal(x: int) -> int:
        if x == 3:
            raise Fatal("stop everything")
        await asyncio.sleep(0.001)
        return x

    with pytest.raises(Fatal):
        shoal.map(fatal, range(20), backend="asyncio", workers=4)


@pytest.mark.parametrize("max_in_flight", [1, 5])
def test_max_in_flight_bounds_the_lot(max_in_flight: int) -> None:
    """50 workers would take a lot of 50; max_in_flight keeps what is pulled
    ahead of the consumer (this coroutine) within its bound. A batch of
    results delivered together is iterated before the engine can pull again,
    so the bound is checked with one window of slack."""
    pulled: list[int] = []

    def source() -> Any:
        for i in range(100):
            pulled.append(i)
            yield i

    async def consume() -> int:
        seen = worst = 0
        async for r in shoal.aimap(Gauge(), (0.001 for _ in source()), backend="asyncio",
                                   workers=50, max_in_flight=max_in_flight):
            assert r.ok
            seen += 1
            worst = max(worst, len(pulled) - seen)
        return worst

    assert asyncio.run(consume()) <= 2 * max_in_flight


@pytest.mark.parametrize("workers", [1, 20])
def test_a_retry_after_the_input_ends_still_runs(workers: int) -> None:
    """Idle workers end once the input is exhausted; a retry that comes after
    that must start one again, not hang or be dropped."""
    seen: set[int] = set()

    async def fail_once(x: int) -> int:
        await asyncio.sleep(0.01)
        if x not in seen:
            seen.add(x)
            raise ConnectionError(f"transient {x}")
        return x

    policy = shoal.RetryPolicy(retries=1, backoff=0.05)
    report = shoal.run(fail_once, range(20), backend="asyncio", workers=workers,
                       retries=policy)
    assert report.values == list(range(20))
    assert all(r.attempts == 2 for r in report.results)
