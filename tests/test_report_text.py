"""How a run's figures read: readable units, one throughput, what summary() says."""

from __future__ import annotations

import math

import pytest

from shoal._core.results import BatchReport, ItemResult, format_seconds, format_throughput


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0 s"), (3.5e-6, "3.50 µs"), (35.2e-6, "35.2 µs"), (0.0009996, "1.00 ms"),
    (0.015, "15.0 ms"), (0.25, "250 ms"), (0.9996, "1.00 s"), (1.16, "1.16 s"),
    (12.345, "12.3 s"), (59.94, "59.9 s"), (59.96, "0:01:00"), (3725, "1:02:05"),
    (math.nan, "-"),
])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_throughput_counts_restored_results_and_says_so() -> None:
    assert format_throughput(1000, 0, 2.0) == "500.0 items/s"
    assert format_throughput(1000, 900, 2.0) == (
        "500.0 items/s (900 restored included; computed: 50.0 items/s)")
    assert format_throughput(0, 0, 0.0) == "- items/s"


def _report(durations: list[float], *, restored: int = 0, failed: int = 0,
            wall_time: float = 0.5) -> BatchReport[int]:
    results: list[ItemResult[int]] = []
    for i, d in enumerate(durations):
        bad = i < failed
        results.append(ItemResult(i, i, not bad, None if bad else i,
                                  ValueError(i) if bad else None, duration=d,
                                  restored=i >= len(durations) - restored))
    return BatchReport(results, "threads", "chosen by the caller", 4, wall_time)


def test_summary_latencies_in_readable_units() -> None:
    text = _report([40e-6] * 51 + [2e-3] * 47 + [1.5, 1.5]).summary()
    assert "latency per item: p50 40.0 µs, p95 2.00 ms, p99 1.50 s" in text
    assert "0.0000 s" not in text
    assert "wall time: 500 ms, throughput: 200.0 items/s" in text


def test_summary_with_restored_items_states_both_rates() -> None:
    text = _report([0.01] * 10, restored=6, failed=1).summary()
    assert "items: 10 (9 ok, 1 failed, 6 restored from checkpoint)" in text
    assert "throughput: 20.0 items/s (6 restored included; computed: 8.0 items/s)" in text
    assert "failures by type: ValueError: 1" in text


def test_summary_of_an_all_restored_run_has_no_latency_line() -> None:
    text = _report([0.01] * 3, restored=3).summary()
    assert "latency" not in text and "nan" not in text
