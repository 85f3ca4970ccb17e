"""Progress reporting: rate estimator, log lines, callbacks, tqdm bar, option parsing.

Every timing test drives an injected fake clock; nothing sleeps.
"""

from __future__ import annotations

import io
import itertools
import logging
import random
import sys
import types
from collections.abc import Iterable, Iterator

import pytest

from shoal._core.errors import InvalidOptionError
from shoal._core.results import BatchReport, ItemResult, format_seconds
from shoal._sinks import progress as _progress
from shoal._sinks.base import RunInfo, RunObserver
from shoal._sinks.progress import (
    CallbackProgress,
    LineProgress,
    ProgressEvent,
    RateEstimator,
    TqdmProgress,
    format_duration,
    format_line,
    make_progress,
)


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def results(start: int, n: int, *, failed: Iterable[int] = (), restored: bool = False) -> list[
    ItemResult[int]
]:
    bad = set(failed)
    return [
        ItemResult(index=i, item=i, ok=i not in bad, value=None if i in bad else i,
                   error=ValueError(i) if i in bad else None, restored=restored)
        for i in range(start, start + n)
    ]


def info(total: int | None) -> RunInfo:
    return RunInfo(total=total, backend="threads", workers=4)


# --- RateEstimator -----------------------------------------------------------


def test_steady_rate_is_exact() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    for t in range(1, 31):
        est.add(100, float(t))
        assert est.rate(float(t)) == pytest.approx(100.0)


def test_rate_follows_a_change_within_the_window() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    for t in range(1, 31):
        est.add(100, float(t))
    for t in range(31, 46):
        est.add(10, float(t))
        if t == 35:
            # window (25, 35]: 5 s at 100/s and 5 s at 10/s
            assert est.rate(35.0) == pytest.approx(55.0)
    assert est.rate(45.0) == pytest.approx(10.0)


def test_stall_decays_rate_and_grows_eta() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    for t in range(1, 31):
        est.add(100, float(t))
    assert est.eta(1000, 30.0) == pytest.approx(10.0)
    # nothing finishes for 5 s: half the window is empty
    assert est.rate(35.0) == pytest.approx(50.0)
    assert est.eta(1000, 35.0) == pytest.approx(20.0)


def test_rate_is_stable_under_bursty_batches() -> None:
    rng = random.Random(0)
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    rates, instant = [], []
    t = 0.0
    for _ in range(600):  # ~60 s of batches of 0..20 items every 0.1 s: mean 100/s
        n = rng.randint(0, 20)
        t += 0.1
        est.add(n, t)
        instant.append(n / 0.1)
        if t > 10.0:
            rates.append(est.rate(t))
    # per-batch rates swing over 0..200 items/s; the moving average does not
    assert min(instant) < 20 and max(instant) > 180
    assert 88.0 < min(rates) and max(rates) < 112.0


def test_restored_items_are_not_throughput() -> None:
    clock = FakeClock()
    events: list[ProgressEvent] = []
    cb = CallbackProgress(events.append, clock=clock, min_interval=0.0)
    cb.on_start(info(1000))
    cb.on_results(results(0, 900, restored=True))  # instantly, from a checkpoint
    for k in range(10):
        clock.t = k + 1.0
        cb.on_results(results(900 + 10 * k, 10))
    ev = events[-1]
    assert (ev.done, ev.restored, ev.ok) == (1000, 900, 1000)
    assert ev.rate == pytest.approx(10.0)
    mid = events[5]  # t=5 s: 950 done, 50 left at 10/s
    assert mid.done == 950
    assert mid.rate == pytest.approx(10.0) and mid.eta == pytest.approx(5.0)


def test_eta_values() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    assert est.eta(100, 0.0) is None  # no rate yet
    est.add(50, 5.0)
    assert est.eta(500, 5.0) == pytest.approx(50.0)
    assert est.eta(None, 5.0) is None
    assert est.eta(0, 5.0) == 0.0


def test_estimator_memory_is_bounded() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    for k in range(100_000):  # 10 000 updates a second for 10 s
        est.add(1, k / 10_000)
    assert len(est._samples) <= 34
    assert est.rate(10.0) == pytest.approx(10_000, rel=0.01)


def test_estimator_rejects_bad_window() -> None:
    with pytest.raises(InvalidOptionError, match="window"):
        RateEstimator(window=0)


def test_format_duration() -> None:
    assert format_duration(45) == "0:00:45"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(0.2) == "0:00:01"
    assert format_duration(-3) == "0:00:00"


# --- LineProgress ------------------------------------------------------------


def test_line_progress_output_and_throttling() -> None:
    clock, out = FakeClock(), io.StringIO()
    lp = LineProgress(out, clock=clock)
    lp.on_start(info(1000))
    for k in range(10):  # 10 items/s, one failure in the first batch
        clock.t = k + 1.0
        lp.on_results(results(10 * k, 10, failed=[0]))
    lp.on_finish(None)
    assert out.getvalue().splitlines() == [
        "shoal: 50/1000 (5%) ok=49 failed=1 10.0 items/s ETA 0:01:35",
        "shoal: 100/1000 (10%) ok=99 failed=1 10.0 items/s ETA 0:01:30",
        "shoal: 100/1000 (10%) ok=99 failed=1 done in 10.0 s, throughput 10.0 items/s",
    ]


def test_line_progress_many_batches_few_lines() -> None:
    clock, out = FakeClock(), io.StringIO()
    lp = LineProgress(out, clock=clock, interval=5.0)
    lp.on_start(info(None))
    for k in range(12_000):  # 1000 batches a second for 12 s
        clock.t = (k + 1) / 1000
        lp.on_results(results(k, 1))
    assert len(out.getvalue().splitlines()) == 2  # at 5 s and 10 s
    lp.on_finish(None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1] == ("shoal: 12000 ok=12000 failed=0 done in 12.0 s, "
                         "throughput 1,000.0 items/s")


def test_unknown_total_shows_count_and_rate_only() -> None:
    clock, out = FakeClock(), io.StringIO()
    lp = LineProgress(out, clock=clock)
    lp.on_start(info(None))
    for k in range(5):
        clock.t = k + 1.0
        lp.on_results(results(10 * k, 10))
    assert out.getvalue() == "shoal: 50 ok=50 failed=0 10.0 items/s\n"
    ev = lp.event()
    assert ev.total is None and ev.eta is None


def test_total_hint_used_only_when_run_total_unknown() -> None:
    clock = FakeClock()
    lp = make_progress(True, 200, clock=clock, stream=io.StringIO())
    assert isinstance(lp, LineProgress)
    lp.on_start(info(None))
    assert lp.event().total == 200
    lp.on_start(info(50))
    assert lp.event().total == 50


def test_restored_shown_and_observer_reusable() -> None:
    clock, out = FakeClock(), io.StringIO()
    lp = LineProgress(out, clock=clock)
    lp.on_start(info(10))
    lp.on_results(results(0, 4, restored=True))
    assert "restored=4" in format_line(lp.event())
    lp.on_start(info(10))  # second run: counts start over
    assert (lp.event().done, lp.event().restored) == (0, 0)


def test_interrupted_final_line() -> None:
    clock, out = FakeClock(), io.StringIO()
    lp = LineProgress(out, clock=clock)
    lp.on_start(info(10))
    clock.t = 2.0
    lp.on_results(results(0, 3))
    report: BatchReport[int] = BatchReport(
        results=results(0, 3), backend="threads", backend_reason="test", workers=4,
        wall_time=2.0, interrupted=True,
    )
    lp.on_finish(report)
    assert out.getvalue() == (
        "shoal: 3/10 (30%) ok=3 failed=0 done in 2.00 s, throughput 1.5 items/s [interrupted]\n"
    )


def test_closed_stream_does_not_fail_the_run() -> None:
    out = io.StringIO()
    lp = LineProgress(out, clock=FakeClock(), interval=0)
    lp.on_start(info(3))
    out.close()
    lp.on_results(results(0, 3))  # write raises ValueError internally
    lp.on_finish(None)


def test_negative_interval_rejected() -> None:
    with pytest.raises(InvalidOptionError, match="interval"):
        LineProgress(io.StringIO(), interval=-1)


# --- CallbackProgress --------------------------------------------------------


def test_callback_counts_throttling_and_final_event() -> None:
    clock = FakeClock()
    events: list[ProgressEvent] = []
    cb = make_progress(events.append, 64, clock=clock)
    assert isinstance(cb, CallbackProgress)
    cb.on_start(info(None))
    step = 1 / 64  # binary-exact timestamps
    for k in range(64):
        clock.t = (k + 1) * step
        cb.on_results(results(k, 1, failed=[5]))
    # first batch at once, then one per >= 0.1 s: batches 1, 8, 15, ..., 64
    assert [e.done for e in events] == [1, 8, 15, 22, 29, 36, 43, 50, 57, 64]
    assert all(b.elapsed - a.elapsed >= 0.1 for a, b in itertools.pairwise(events))
    cb.on_finish(None)
    final = events[-1]
    assert len(events) == 11  # the final event comes even right after a throttled one
    assert (final.done, final.total, final.ok, final.failed) == (64, 64, 63, 1)
    assert final.eta == 0.0 and final.elapsed == 1.0


def test_callback_final_event_has_counts_the_throttle_held_back() -> None:
    clock = FakeClock()
    events: list[ProgressEvent] = []
    cb = CallbackProgress(events.append, clock=clock)
    cb.on_start(info(30))
    for k in range(3):
        clock.t = 0.01 * (k + 1)
        cb.on_results(results(10 * k, 10))
    assert [e.done for e in events] == [10]
    cb.on_finish(None)
    assert [e.done for e in events] == [10, 30]


# --- tqdm bar and option parsing ---------------------------------------------


def test_tty_gets_a_tqdm_bar_with_counts() -> None:
    clock, tty = FakeClock(), FakeTTY()
    bar = make_progress(True, clock=clock, stream=tty)
    assert isinstance(bar, TqdmProgress)
    bar.on_start(info(10))
    for k in range(10):
        clock.t = (k + 1) * 0.5
        bar.on_results(results(k, 1, failed=[3]))
        if k == 4:
            assert "ok=4, failed=1, 2.0 items/s, ETA 0:00:03" in tty.getvalue()
    bar.on_finish(None)
    final = tty.getvalue().split("\r")[-1]
    assert "100%" in final and "10/10" in final
    assert "ok=9, failed=1" in final and "items/s" in final
    assert final.endswith("\n")


def test_tqdm_unknown_total_and_redraw_throttle() -> None:
    clock, tty = FakeClock(), FakeTTY()
    bar = TqdmProgress(tty, clock=clock)
    bar.on_start(info(None))
    for k in range(1000):  # 1000 batches in 1 s
        clock.t = (k + 1) / 1000
        bar.on_results(results(k, 1))
    bar.on_finish(None)
    text = tty.getvalue()
    assert text.count("\r") <= 13  # ~10 redraws/s, not 1000
    final = text.split("\r")[-1]
    assert "1000" in final and "ok=1000" in final
    assert "%" not in text and "ETA" not in text


def test_no_terminal_gets_log_lines_and_notebook_gets_a_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(make_progress(True, stream=io.StringIO()), LineProgress)
    monkeypatch.setattr(_progress, "_in_jupyter_kernel", lambda: True)
    assert isinstance(make_progress(True, stream=io.StringIO()), TqdmProgress)


def test_jupyter_kernel_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = types.SimpleNamespace(kernel=object())
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not _progress._in_jupyter_kernel()  # plain IPython terminal
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert _progress._in_jupyter_kernel()
    fake_ipython.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert not _progress._in_jupyter_kernel()


def test_off_and_observer_passthrough() -> None:
    assert make_progress(False) is None
    assert make_progress(None) is None
    lp = LineProgress(io.StringIO())
    assert isinstance(lp, RunObserver)
    assert make_progress(lp, 5) is lp


@pytest.mark.parametrize("bad", ["yes", 1, 0.5, object()])
def test_invalid_option_names_value_and_forms(bad: object) -> None:
    with pytest.raises(InvalidOptionError, match="callable") as exc:
        make_progress(bad)
    assert repr(bad) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_observer_class_instead_of_instance_rejected() -> None:
    with pytest.raises(InvalidOptionError, match="LineProgress is a class"):
        make_progress(LineProgress)


def test_bad_total_hint_rejected() -> None:
    with pytest.raises(InvalidOptionError, match="total"):
        make_progress(True, -1)


# --- the first event after the auto probe -------------------------------------


def test_a_backlog_batch_opens_the_window_instead_of_counting_in_it() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    est.add(16, 0.0001)  # 16 items run before the clock started, delivered at once
    for k in range(1, 11):
        est.add(33, 0.0001 + 0.1 * k)  # then 330 items/s
        # counted in the window, the 16 would read 490/s after 0.1 s
        assert est.rate(0.0001 + 0.1 * k) == pytest.approx(330.0)


def test_until_a_second_batch_the_rate_is_since_reset_and_decays() -> None:
    est = RateEstimator(window=10.0)
    est.reset(0.0)
    est.add(4, 10.0)  # four slow items, all at once
    assert est.rate(10.0) == pytest.approx(0.4)
    assert est.rate(20.0) == pytest.approx(0.2)  # nothing since: the rate decays
    est.add(4, 20.0)
    assert est.rate(20.0) == pytest.approx(0.4)  # measured from the first batch on


def test_first_event_after_a_probe_counts_the_probe_items_over_their_time() -> None:
    # make_progress is called as the run is set up; the auto probe then runs 16
    # items of 3 ms before on_start, and they arrive in one batch an instant later.
    clock = FakeClock()
    events: list[ProgressEvent] = []
    cb = make_progress(events.append, clock=clock)
    assert cb is not None
    clock.t = 0.048
    cb.on_start(info(400))
    clock.t = 0.0481
    cb.on_results(results(0, 16))
    first = events[0]
    assert first.rate == pytest.approx(16 / 0.0481)  # ~333/s, not 16 / 0.0001 = 160,000/s
    assert first.eta == pytest.approx(384 * 0.0481 / 16)
    assert first.elapsed == pytest.approx(0.0481)
    clock.t = 0.1481
    cb.on_results(results(16, 33))
    assert events[1].rate == pytest.approx(330.0)


def test_first_event_of_a_real_auto_run_is_sane(monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole path: Run sets up progress, the auto probe runs items inline,
    # then observers start. Time is a fake clock that each item advances by
    # 3 ms (and each reading by 1 µs), so the true rate is ~333/s exactly.
    import shoal

    clock = FakeClock()

    def tick() -> float:
        clock.t += 1e-6
        return clock.t

    def item(x: int) -> int:
        clock.t += 0.003
        return x

    defaults = _progress.make_progress.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "clock", tick)  # the clock Run's make_progress call uses
    events: list[ProgressEvent] = []
    report = shoal.run(item, range(400), progress=events.append)
    assert report.backend_reason.startswith("auto")  # the probe ran before on_start
    assert events[0].done >= 1
    for e in events[:-1]:
        assert 300 < e.rate < 340, e
        assert e.eta == pytest.approx((400 - e.done) / e.rate)


def test_make_progress_times_the_run_from_its_set_up_but_not_a_callers_observer() -> None:
    clock = FakeClock()
    made = make_progress(True, clock=clock, stream=io.StringIO())
    mine = LineProgress(io.StringIO(), clock=clock)
    assert isinstance(made, LineProgress)
    clock.t = 2.0
    for obs in (made, mine):
        obs.on_start(info(10))
    clock.t = 3.0
    assert made.event().elapsed == 3.0
    assert mine.event().elapsed == 1.0
    made.on_start(info(10))  # reused: its second run starts at its on_start
    assert made.event().elapsed == 0.0


# --- one time, one format -------------------------------------------------------


def test_final_line_shows_the_reports_wall_time_and_throughput() -> None:
    import shoal

    out = io.StringIO()
    report = shoal.run(abs, range(-50, 50), backend="sequential",
                       progress=LineProgress(out))
    final = out.getvalue().splitlines()[-1]
    summary = report.summary()
    wall = format_seconds(report.wall_time)
    assert f"done in {wall}, throughput {report.throughput:,.1f} items/s" in final
    assert f"wall time: {wall}, throughput: {report.throughput:,.1f} items/s" in summary
    assert "0:00:01" not in final  # a 0.2 s run is not rounded up to a second


def test_final_event_of_a_run_carries_the_report_wall_time() -> None:
    clock = FakeClock()
    events: list[ProgressEvent] = []
    cb = CallbackProgress(events.append, clock=clock)
    cb.on_start(info(3))
    clock.t = 0.5
    cb.on_results(results(0, 3))
    report: BatchReport[int] = BatchReport(results(0, 3), "threads", "test", 4, wall_time=0.52)
    cb.on_finish(report)
    assert events[-1].elapsed == 0.52 and cb.final == events[-1]
    assert format_line(events[-1], final=True).endswith(
        "done in 520 ms, throughput 5.8 items/s")


# --- progress through logging ------------------------------------------------------


@pytest.fixture
def shoal_log() -> Iterator[list[logging.LogRecord]]:
    """A handler on the ``shoal`` logger at INFO, as a service would configure."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("shoal")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_configured_logging_gets_progress_records(
    shoal_log: list[logging.LogRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    lp = make_progress(True, 100, clock=clock)
    assert isinstance(lp, LineProgress)
    lp.on_start(info(100))
    for k in range(10):
        clock.t = k + 1.0
        lp.on_results(results(10 * k, 10))
    lp.on_finish(None)
    assert [(r.name, r.levelname) for r in shoal_log] == [("shoal", "INFO")] * 3
    assert shoal_log[0].getMessage() == "50/100 (50%) ok=50 failed=0 10.0 items/s ETA 0:00:05"
    assert shoal_log[-1].getMessage().startswith("100/100 (100%) ok=100 failed=0 done in")
    assert capsys.readouterr().err == ""  # not also on stderr


def test_interrupted_run_logs_a_warning(shoal_log: list[logging.LogRecord]) -> None:
    lp = LineProgress(logger=logging.getLogger("shoal"), clock=FakeClock())
    lp.on_start(info(10))
    lp.on_results(results(0, 3))
    lp.on_finish(BatchReport(results(0, 3), "threads", "t", 4, wall_time=1.0, interrupted=True))
    assert shoal_log[-1].levelname == "WARNING"
    assert shoal_log[-1].getMessage().endswith("[interrupted]")


def test_without_logging_configured_the_plain_line_goes_to_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest puts its capture handler on the root logger, whose level stays
    # WARNING: logging would not show INFO, so progress keeps its own line.
    assert not logging.getLogger("shoal").isEnabledFor(logging.INFO)
    lp = make_progress(True)
    assert isinstance(lp, LineProgress) and lp._logger is None
    # a handler that would show INFO, but an explicit stream wins
    monkeypatch.setattr(_progress, "_logging_shows_progress", lambda: True)
    assert isinstance(make_progress(True), LineProgress)
    assert make_progress(True)._logger is not None  # type: ignore[union-attr]
    assert make_progress(True, stream=io.StringIO())._logger is None  # type: ignore[union-attr]


def test_stream_and_logger_together_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="not both"):
        LineProgress(io.StringIO(), logger=logging.getLogger("shoal"))
