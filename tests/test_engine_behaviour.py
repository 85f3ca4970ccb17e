"""The engine's behaviour, run on every backend through ``backend_opts``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
import workfns


def test_map_keeps_input_order(backend_opts: dict[str, Any]) -> None:
    assert shoal.map(workfns.square, range(50), **backend_opts) == [x * x for x in range(50)]


def test_empty_input_gives_empty_results(backend_opts: dict[str, Any]) -> None:
    assert shoal.map(workfns.square, [], **backend_opts) == []
    report = shoal.run(workfns.square, [], **backend_opts)
    assert report.total == 0 and report.results == []


def test_run_reports_every_item(backend_opts: dict[str, Any]) -> None:
    items = [3, -1, 4, -5, 9]
    report = shoal.run(workfns.fail_on_negative, items, **backend_opts)
    assert [r.index for r in report.results] == [0, 1, 2, 3, 4]
    assert [r.item for r in report.results] == items
    assert report.values == [30, 40, 90]
    assert [r.index for r in report.failures] == [1, 3]
    for failure in report.failures:
        assert isinstance(failure.error, ValueError)
        assert "negative item" in str(failure.error)
        assert "ValueError" in failure.traceback
        assert failure.attempts == 1
    assert all(r.worker for r in report.results)
    assert all(r.duration >= 0 for r in report.results)
    assert report.backend == backend_opts["backend"]
    assert report.errors_by_type == {"ValueError": 2}


def test_all_or_nothing_raises_the_item_error(backend_opts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="negative item -2"):
        shoal.map(workfns.fail_on_negative, [1, -2, 3], **backend_opts)


def test_skip_failed_drops_failures_from_values(backend_opts: dict[str, Any]) -> None:
    values = shoal.map(workfns.fail_on_negative, [1, -2, 3, -4], on_error="skip_failed",
                       **backend_opts)
    assert values == [10, 30]


def test_collect_errors_keeps_exceptions_in_place(backend_opts: dict[str, Any]) -> None:
    values = shoal.map(workfns.fail_on_negative, [1, -2, 3], on_error="collect_errors",
                       **backend_opts)
    assert values[0] == 10 and values[2] == 30
    assert isinstance(values[1], ValueError)


def test_retries_rerun_failed_items(backend_opts: dict[str, Any], tmp_path: Path) -> None:
    items = [(str(tmp_path), x) for x in range(6)]
    policy = shoal.RetryPolicy(retries=2, backoff=0.0)
    report = shoal.run(workfns.flaky, items, retries=policy, **backend_opts)
    assert report.values == list(range(6))
    assert [r.attempts for r in report.results] == [2] * 6


def test_retries_give_up_after_the_limit(backend_opts: dict[str, Any]) -> None:
    policy = shoal.RetryPolicy(retries=2, backoff=0.0)
    report = shoal.run(workfns.fail_on_negative, [-1, 2], retries=policy, **backend_opts)
    assert report.results[0].attempts == 3 and not report.results[0].ok
    assert report.results[1].attempts == 1 and report.results[1].ok


def test_retry_predicate_limits_what_is_retried(backend_opts: dict[str, Any]) -> None:
    policy = shoal.RetryPolicy(retries=3, backoff=0.0, retry_on=(ConnectionError,))
    report = shoal.run(workfns.fail_on_negative, [-1], retries=policy, **backend_opts)
    assert report.results[0].attempts == 1  # ValueError is not a ConnectionError


def test_async_functions_run_on_every_backend(backend_opts: dict[str, Any]) -> None:
    assert shoal.map(workfns.asquare, range(20), **backend_opts) == [x * x for x in range(20)]


def test_imap_unordered_yields_every_item(backend_opts: dict[str, Any]) -> None:
    results = list(shoal.imap(workfns.square, range(40), ordered=False, **backend_opts))
    assert sorted(r.index for r in results) == list(range(40))
    assert all(r.value == r.index**2 for r in results)


def test_imap_ordered_streams_a_generator(backend_opts: dict[str, Any]) -> None:
    gen = (x for x in range(100))
    results = shoal.imap(workfns.square, gen, **backend_opts)
    assert [r.value for r in results] == [x * x for x in range(100)]


def test_imap_stops_early_on_an_endless_input(backend_opts: dict[str, Any]) -> None:
    results = shoal.imap(workfns.square, itertools.count(), **backend_opts)
    first = list(itertools.islice(results, 10))
    assert [r.value for r in first] == [x * x for x in range(10)]
    results.close()  # type: ignore[attr-defined]


def test_a_slow_item_does_not_hold_back_the_others(concurrent_opts: dict[str, Any]) -> None:
    """As-completed delivery: fast items arrive while a slow one still runs.

    A chunk runs in order on one worker, so chunk_size=1 makes each item its
    own unit; asyncio keeps its default lot, which still hands out one item
    per worker.
    """
    asy = concurrent_opts["backend"] == "asyncio"
    fn = workfns.asleep_then_return if asy else workfns.sleep_then_return
    opts = concurrent_opts if asy else {**concurrent_opts, "chunk_size": 1}
    items = [1.0] + [0.0] * 11
    order = [r.index for r in shoal.imap(fn, items, ordered=False, workers=2, **opts)]
    assert sorted(order) == list(range(12))
    assert order[-1] == 0


def test_timeout_fails_only_the_hung_item(concurrent_opts: dict[str, Any]) -> None:
    fn = workfns.ahang_on if concurrent_opts["backend"] == "asyncio" else workfns.hang_on
    report = shoal.run(fn, ["a", "hang", "b", "c"], timeout=0.5, **concurrent_opts)
    assert [r.ok for r in report.results] == [True, False, True, True]
    assert isinstance(report.results[1].error, TimeoutError)
    assert report.values == ["a", "b", "c"]


def test_checkpoint_resume_skips_finished_items(
    backend_opts: dict[str, Any], tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    work = tmp_path / "work"
    work.mkdir()
    items = [(str(work), x) for x in range(12)]
    first = shoal.run(workfns.count_calls, items, checkpoint=db, **backend_opts)
    assert first.values == [x + 1 for x in range(12)] and first.restored == 0
    second = shoal.run(workfns.count_calls, items, checkpoint=db, **backend_opts)
    assert second.values == first.values
    assert second.restored == 12
    assert sorted(workfns.calls(work)) == list(range(12))  # nothing ran twice


def test_progress_callback_sees_every_item(backend_opts: dict[str, Any]) -> None:
    events: list[Any] = []
    shoal.run(workfns.square, range(30), progress=events.append, **backend_opts)
    assert events, "the callback was never called"
    last = events[-1]
    assert (last.done, last.ok, last.failed, last.total) == (30, 30, 0, 30)


def test_amap_and_aimap_from_a_running_loop(backend_opts: dict[str, Any]) -> None:
    async def main() -> tuple[list[int], list[int | None]]:
        values = await shoal.amap(workfns.asquare, range(10), **backend_opts)
        seen = [r.value async for r in shoal.aimap(workfns.square, range(10), **backend_opts)]
        return values, seen

    values, seen = asyncio.run(main())
    assert values == seen == [x * x for x in range(10)]


def test_sync_map_inside_a_running_loop(backend_opts: dict[str, Any]) -> None:
    """As in a Jupyter cell: a loop is running and the user calls shoal.map."""

    async def cell() -> list[int]:
        return shoal.map(workfns.asquare, range(5), **backend_opts)

    assert asyncio.run(cell()) == [0, 1, 4, 9, 16]


def test_broken_input_iterator_is_raised(backend_opts: dict[str, Any]) -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        shoal.run(workfns.square, items(), **backend_opts)


def test_resume_with_more_restored_items_than_the_window(
    backend_opts: dict[str, Any], tmp_path: Path
) -> None:
    """Restored results can fill max_in_flight; the run must still finish."""
    db = tmp_path / "run.db"
    work = tmp_path / "work"
    work.mkdir()
    items = [(str(work), x) for x in range(150)]
    shoal.run(workfns.count_calls, items, checkpoint=db, **backend_opts)
    again = shoal.run(workfns.count_calls, items, checkpoint=db, max_in_flight=16,
                      **backend_opts)
    assert again.restored == 150 and again.values == [x + 1 for x in range(150)]
    assert len(workfns.calls(work)) == 150
