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
import threading
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
    values: list[Any] = shoal.map(gauge, [0.01] * 50, backend="asyncio", workers=7)
    assert values == [0.01] * 50
    assert gauge.peak == 7


def test_a_lot_finished_out_of_order_is_delivered_in_order() -> None:
    rng = random.Random(7)
    delays = [rng.choice([0.0, 0.002, 0.02]) for _ in range(300)]

    async def echo(x: tuple[int, float]) -> int:
        await asyncio.sleep(x[1])
        return x[0]

    out: list[Any] = shoal.map(echo, list(enumerate(delays)), backend="asyncio", workers=50)
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


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_base_exception_from_fn_fails_its_item_alone(timeout: float | None) -> None:
    """SystemExit (argparse rejecting a record) is one item's failure, as on
    every backend; with a timeout the item runs in a task of its own, which
    would re-raise SystemExit out of the event loop if it were not carried."""
    class Fatal(BaseException):
        pass

    async def fatal(x: int) -> int:
        await asyncio.sleep(0.001)
        if x == 3:
            raise Fatal("stop everything")
        if x == 5:
            raise SystemExit(2)
        return x

    report = shoal.run(fatal, range(20), backend="asyncio", workers=4, timeout=timeout)
    assert [r.index for r in report.failures] == [3, 5]
    assert isinstance(report.results[3].error, Fatal)
    assert isinstance(report.results[5].error, SystemExit)
    assert report.succeeded == 18
    with pytest.raises(Fatal):  # all_or_nothing raises the item's own exception
        shoal.map(fatal, range(20), backend="asyncio", workers=4, timeout=timeout)


@pytest.mark.parametrize("max_in_flight", [1, 5])
def test_max_in_flight_bounds_the_lot(max_in_flight: int) -> None:
    """50 workers would take a lot of 50; max_in_flight keeps what is pulled
    ahead of the consumer (this coroutine) within its bound: an item counts
    until the consumer has it."""
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

    assert asyncio.run(consume()) <= max_in_flight


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
    report: shoal.BatchReport[Any] = shoal.run(fail_once, range(20), backend="asyncio",
                                               workers=workers, retries=policy)
    assert report.values == list(range(20))
    assert all(r.attempts == 2 for r in report.results)


class Stubborn:
    """An item coroutine that swallows every ``CancelledError`` until the test
    lets it go (``let_go``): a timeout can fail it but never stop it."""

    def __init__(self) -> None:
        self.let_go = threading.Event()
        self.cancels = 0
        self.ended = threading.Event()

    async def __call__(self, x: int) -> int:
        if x != 1:
            await asyncio.sleep(0.001)
            return x
        try:
            while not self.let_go.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    self.cancels += 1
            return x
        finally:
            self.ended.set()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("call", ["map", "run", "imap"])
def test_an_item_that_swallows_its_cancellation_is_abandoned(call: str) -> None:
    """The item fails with TimeoutError, the others run, and the run returns:
    neither the worker nor the loop shoal owns waits for the stubborn item,
    which is left to end on its own, as an abandoned thread is."""
    stubborn = Stubborn()
    opts: dict[str, Any] = {"backend": "asyncio", "workers": 2, "timeout": 0.3}
    out: list[Any]
    try:
        if call == "map":
            out = shoal.map(stubborn, range(6), on_error="collect_errors", **opts)
        elif call == "run":
            out = [r.value if r.ok else r.error for r in shoal.run(stubborn, range(6), **opts)
                   .results]
        else:
            out = [r.value if r.ok else r.error for r in shoal.imap(stubborn, range(6), **opts)]
        assert isinstance(out.pop(1), TimeoutError)
        assert out == [0, 2, 3, 4, 5]
        assert stubborn.cancels >= 1  # it was cancelled, and shrugged it off
        assert not stubborn.ended.is_set()  # still running: left behind, not waited for
    finally:
        stubborn.let_go.set()
    assert stubborn.ended.wait(5)  # and it ends on its own once it wants to
    leftover = [t for t in threading.enumerate() if t.name == "shoal-loop-left"]
    for t in leftover:  # the loop it was left on closes after it
        t.join(5)
        assert not t.is_alive()


@pytest.mark.timeout(20)
def test_a_stubborn_item_does_not_hold_up_amap_on_the_callers_loop() -> None:
    stubborn = Stubborn()

    async def main() -> list[Any]:
        try:
            return await shoal.amap(stubborn, range(4), backend="asyncio", timeout=0.3,
                                    on_error="collect_errors")
        finally:
            stubborn.let_go.set()  # the caller's loop is the caller's: let asyncio.run end

    out = asyncio.run(main())
    assert isinstance(out[1], TimeoutError) and out[:1] + out[2:] == [0, 2, 3]


@pytest.mark.timeout(20)
def test_a_stubborn_item_does_not_hold_up_a_failed_run() -> None:
    """all_or_nothing cancels the running items; one that ignores that is left
    behind after a short grace, so the failure is raised promptly."""
    stubborn = Stubborn()

    async def fail_late(x: int) -> int:
        if x == 3:
            await asyncio.sleep(0.05)
            raise ValueError("item 3 is bad")
        return await stubborn(x)

    try:
        with pytest.raises(ValueError, match="item 3 is bad"):
            shoal.map(fail_late, range(4), backend="asyncio", workers=4)
        assert not stubborn.ended.is_set()
    finally:
        stubborn.let_go.set()
    assert stubborn.ended.wait(5)


def test_workers_start_as_items_need_them() -> None:
    """workers=100_000 for 3 items starts no more than a few coroutines."""
    seen: list[int] = []

    async def count_tasks(x: int) -> int:
        seen.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0.001)
        return x

    out: list[Any] = shoal.map(count_tasks, range(3), backend="asyncio", workers=100_000)
    assert out == [0, 1, 2]
    assert max(seen) <= 8


def test_max_items_per_worker_is_refused() -> None:
    """Coroutines on one loop have nothing of their own to recycle."""
    async def one(x: int) -> int:
        return x

    with pytest.raises(shoal.InvalidOptionError, match='max_items_per_worker is not supported '
                                                       'by backend="asyncio"'):
        shoal.map(one, range(3), backend="asyncio", max_items_per_worker=2)


@pytest.mark.parametrize("honour", [True, False])
def test_a_timed_out_item_does_not_cost_its_worker(monkeypatch: pytest.MonkeyPatch,
                                                   honour: bool) -> None:
    """Whether the item honours its cancellation at once or swallows it, its
    worker goes on with the next item: one worker runs the whole batch."""
    from shoal._backends._asyncio import AsyncioBackend

    spawned: list[int] = []
    spawn = AsyncioBackend._spawn

    def counted(self: AsyncioBackend) -> None:
        spawned.append(1)
        spawn(self)

    monkeypatch.setattr(AsyncioBackend, "_spawn", counted)
    stubborn = Stubborn()

    async def item(x: int) -> int:
        if x == 1 and honour:
            await asyncio.sleep(30)
        return await stubborn(x)

    try:
        report = shoal.run(item, range(4), backend="asyncio", workers=1, timeout=0.2)
    finally:
        stubborn.let_go.set()
    assert [type(r.error).__name__ if r.error else r.value for r in report.results] == [
        0, "TimeoutError", 2, 3]
    assert len(spawned) == 1
