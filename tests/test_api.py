"""Public API contracts: validation, interruption, laziness, auto, exports."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import shoal
import workfns

if TYPE_CHECKING:
    from shoal._core.signatures import BackendName


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, "workers must be a whole number >= 1"),
        ({"workers": -3}, "workers"),
        ({"timeout": -1}, "timeout must be > 0"),
        ({"timeout": "soon"}, "timeout must be seconds"),
        ({"backend": "thread"}, "did you mean 'threads'"),
        ({"backend": "gpu"}, "unknown backend 'gpu'"),
        ({"worker": 4}, "did you mean 'workers'"),
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"retries": -1}, "retries must be a whole number"),
        ({"rate": 0}, "rate must be a positive number"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ],
)
def test_bad_options_name_the_problem(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(shoal.InvalidOptionError, match=match):
        shoal.map(workfns.square, [1, 2], **kwargs)


def test_non_iterable_items_are_refused() -> None:
    with pytest.raises(shoal.InvalidItemsError, match="items must be iterable, got int"):
        shoal.map(workfns.square, 42)  # type: ignore[call-overload]
    with pytest.raises(shoal.InvalidItemsError, match="each character"):
        shoal.run(workfns.square, "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # InvalidItemsError is a TypeError too
        shoal.run(workfns.square, None)  # type: ignore[call-overload]


def test_not_callable_fn_is_refused() -> None:
    with pytest.raises(shoal.InvalidOptionError, match="fn must be callable"):
        shoal.map(3, [1])  # type: ignore[call-overload]


def test_timeout_with_big_chunks_is_refused_on_threads() -> None:
    with pytest.raises(shoal.InvalidOptionError, match="chunk_size=1"):
        shoal.map(workfns.square, [1], backend="threads", timeout=1, chunk_size=8)


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, x: int) -> int:
        return x * self.k


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio"])
def test_any_callable_kind(backend: BackendName) -> None:
    k = 3
    assert shoal.map(lambda x: x + 1, [1, 2], backend=backend) == [2, 3]
    assert shoal.map(lambda x: x * k, [1, 2], backend=backend) == [3, 6]
    assert shoal.map(Scaler(5).scale, [1, 2], backend=backend) == [5, 10]


@pytest.mark.parametrize("backend", ["sequential", "threads"])
def test_ctrl_c_stops_and_keeps_finished_results(backend: BackendName) -> None:
    def fn(x: int) -> int:
        if x == 5:
            _thread.interrupt_main()  # as if the user pressed Ctrl-C now
        if x > 5 and backend == "threads":
            time.sleep(0.05)
        return x * 2

    with pytest.raises(shoal.BatchInterrupted) as info:
        shoal.run(fn, range(1000), backend=backend, workers=2)
    report = info.value.report
    assert report.interrupted
    assert 0 < report.total < 1000
    assert all(r.ok and r.value == r.index * 2 for r in report.results)
    assert isinstance(info.value, KeyboardInterrupt)


def test_ctrl_c_in_a_real_process_exits_promptly() -> None:
    script = (
        "import shoal, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # even if SIGINT is ignored
        "def slow(x):\n    time.sleep(0.2)\n    return x\n"
        "print('started', flush=True)\n"
        "try:\n"
        "    shoal.run(slow, range(10_000), backend='threads', workers=4)\n"
        "except shoal.BatchInterrupted as e:\n"
        "    print('interrupted', e.report.total, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.5)  # let some items finish (not synchronization: any count >= 0 passes)
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.startswith("interrupted ")


def test_imap_pulls_input_lazily_and_bounded() -> None:
    state = {"pulled": 0, "max_ahead": 0}
    consumed = 0

    def source() -> Iterator[int]:
        for i in range(20_000):
            state["pulled"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["pulled"] - consumed)
            yield i

    for r in shoal.imap(workfns.square, source(), backend="threads", workers=4,
                        max_in_flight=100):
        consumed += 1
        assert r.value == r.index**2
    assert consumed == 20_000
    assert state["max_ahead"] <= 100 + 1


def test_rate_limit_holds_over_every_window() -> None:
    starts: list[float] = []
    lock = threading.Lock()

    def record(x: int) -> int:
        with lock:
            starts.append(time.monotonic())
        return x

    rate, burst = 40.0, 2
    shoal.map(record, range(12), backend="threads", workers=8, rate=(rate, burst))
    starts.sort()
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            # The limiter never lets items start early (late is allowed).
            assert j - i + 1 <= burst + rate * (starts[j] - starts[i]) + 1e-3


def test_auto_explains_its_choice() -> None:
    report = shoal.run(workfns.square, range(5000))
    assert report.backend == "sequential"
    assert report.backend_reason.startswith("auto: ")
    io = shoal.run(workfns.sleep_then_return, [0.02] * 40)
    assert io.backend == "threads" and "I/O-bound" in io.backend_reason
    assert io.values == [0.02] * 40
    asy = shoal.run(workfns.asquare, range(5))
    assert asy.backend == "asyncio" and "coroutine" in asy.backend_reason


def test_report_summary_has_the_figures() -> None:
    report = shoal.run(workfns.fail_on_negative, [1, -1, 2], backend="sequential")
    text = report.summary()
    for part in ("items: 3 (2 ok, 1 failed)", "backend: sequential", "throughput",
                 "p50", "p95", "p99", "ValueError: 1"):
        assert part in text
    with pytest.raises(ValueError):
        report.raise_first()


def test_arun_runs_a_coroutine_with_or_without_a_loop() -> None:
    import asyncio

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert shoal.arun(answer()) == 42

    async def inside() -> int:
        return shoal.arun(answer())  # a loop is already running here

    assert asyncio.run(inside()) == 42


def test_all_is_complete_and_sorted() -> None:
    public = {n for n in dir(shoal) if not n.startswith("_")} - {"annotations"}
    modules = {"nodes", "flow", "graph", "cli", "arrays", "demos", "aggregate"}
    assert sorted(shoal.__all__) == shoal.__all__
    assert public - modules == set(shoal.__all__)


def test_import_is_light() -> None:
    """Each heavy module is imported by the first run that needs it, not by ``import shoal``."""
    code = (
        "import sys, shoal\n"
        "heavy = ['multiprocessing', 'numpy', 'dask', 'distributed', 'pandas', 'ray',\n"
        "         'asyncio', 'concurrent.futures', 'sqlite3', 'cloudpickle']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    assert callable(shoal.open_checkpoint) and shoal.ProgressEvent.__name__ == "ProgressEvent"


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "processes"])
def test_ctrl_c_while_the_backend_starts_still_shuts_it_down(
    monkeypatch: Any, backend: BackendName
) -> None:
    from shoal._backends import backend_class

    cls = backend_class(backend)
    shutdowns: list[bool] = []
    start, shutdown = cls.start, cls.shutdown

    def start_then_ctrl_c(self: Any, engine: Any) -> None:
        start(self, engine)
        raise KeyboardInterrupt

    def recorded_shutdown(self: Any, cancel: bool) -> None:
        shutdowns.append(cancel)
        shutdown(self, cancel)

    monkeypatch.setattr(cls, "start", start_then_ctrl_c)
    monkeypatch.setattr(cls, "shutdown", recorded_shutdown)
    threads = threading.active_count()
    children = set(psutil.Process().children(recursive=True))
    with pytest.raises(KeyboardInterrupt):
        shoal.map(workfns.square, range(100), backend=backend, workers=2)
    assert shutdowns == [True]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        threading.active_count() > threads
        or set(psutil.Process().children(recursive=True)) - children
    ):
        time.sleep(0.01)
    assert threading.active_count() == threads  # the workers it started have ended
    assert not set(psutil.Process().children(recursive=True)) - children


def test_auto_falls_back_to_threads_when_fn_cannot_be_pickled() -> None:
    lock = threading.Lock()

    def burn_with_lock(x: int) -> int:
        with lock:  # a lock cannot be pickled: no process can run this
            t0 = time.thread_time()
            while time.thread_time() - t0 < 0.004:
                pass
        return x

    report = shoal.run(burn_with_lock, range(60))
    assert report.values == list(range(60))
    assert report.backend == "threads"
    assert "CPU-bound" in report.backend_reason and "cannot be pickled" in report.backend_reason


def test_failed_items_can_be_kept_on_resume(tmp_path: Any) -> None:
    db = tmp_path / "run.db"
    first = shoal.run(workfns.fail_on_negative, [1, -1], checkpoint=db)
    assert first.failed == 1
    store = shoal.open_checkpoint(db, workfns.fail_on_negative, retry_failed=False)
    again = shoal.run(workfns.fail_on_negative, [1, -1], checkpoint=store)
    assert again.restored == 2 and again.failed == 1
    assert "negative item" in str(again.failures[0].error)
    retried = shoal.run(workfns.fail_on_negative, [1, -1], checkpoint=db)
    assert retried.restored == 1  # by default a failure runs again


def test_public_aggregate_module() -> None:
    from shoal import aggregate

    report = shoal.run(workfns.square, [1, 2, 3, 4, 100], backend="sequential")
    stats = aggregate.describe(report)
    assert (stats.count, stats.min, stats.max) == (5, 1, 10000)
    assert [o.item for o in aggregate.outliers_iqr(report)] == [100]



def test_the_all_or_nothing_note_names_the_failed_item() -> None:
    with pytest.raises(ValueError) as caught:
        shoal.map(workfns.fail_on_negative, [1, 2, -3, 4], backend="sequential")
    notes = getattr(caught.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert any("all_or_nothing" in n and "item 2" in n for n in notes), notes


def test_a_report_makes_item_results_only_when_they_are_read() -> None:
    report = shoal.run(workfns.square, range(10_000), backend="sequential")
    assert report.total == 10_000 and report.failed == 0 and report.succeeded == 10_000
    assert report.values[:3] == [0, 1, 4] and report.latency(50) >= 0
    assert report._results is None  # counts, values and latency came from the columns
    assert report.results[5].value == 25 and report.results[5].index == 5
    assert report._results is not None


def test_errors_by_type_names_the_type_a_remote_error_stands_for() -> None:
    results: list[shoal.ItemResult[Any]] = [
        shoal.ItemResult(0, "x", False, None, shoal.RemoteError("mod.ParseError", "bad")),
        shoal.ItemResult(1, "y", False, None, ValueError("v"))]
    report: shoal.BatchReport[Any] = shoal.BatchReport(results, "threads", "", 1, 0.1)
    assert report.errors_by_type == {"ParseError": 1, "ValueError": 1}


def test_to_dataframe_keeps_the_dtype_of_successful_values() -> None:
    pd = pytest.importorskip("pandas")
    report = shoal.run(workfns.fail_on_negative, [1, -2, 3], backend="sequential")
    frame = report.to_dataframe()
    assert list(frame["index"]) == [0, 1, 2] and list(frame["ok"]) == [True, False, True]
    assert str(frame["value"].dtype) == "Int64" and pd.isna(frame["value"][1])
    assert frame["error_type"][1] == "ValueError"
    whole = shoal.run(workfns.square, range(4), backend="sequential").to_dataframe()
    assert str(whole["value"].dtype) == "int64"
