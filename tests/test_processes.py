"""backend="processes": pickling, crash isolation, timeouts, life-cycle, no orphans.

Fault-injection tests run the faulty item in a real worker process; tests
about the driver's own death or Ctrl-C run a small driver script in a
subprocess. Nothing here waits with ``sleep`` for something to happen: waits
are on pipes, on process exit, or bounded polls of a condition.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal._backends._processes.forkserver import fork_is_safe
from shoal._backends._processes.protocol import (
    Claims,
    StopFlag,
    claim_pipe,
    put_ticket,
    take_ticket,
)
from shoal._backends._processes.worker import run_stoppable
from shoal._core.errors import describe_exit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")

# One parametrized set of options per way the backend sends work: adaptive
# chunks (batch frames), fixed multi-item chunks, and stream mode (a timeout).
MODES = [
    pytest.param({}, id="auto-chunks"),
    pytest.param({"chunk_size": 3}, id="chunks-of-3"),
    pytest.param({"timeout": 60}, id="stream"),
]


@pytest.fixture(params=MODES)
def opts(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"backend": "processes", "workers": 2, **request.param}


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Bounded poll until every process has ended; returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    before = set(psutil.Process().children(recursive=True))  # other suites' pools, say
    yield
    new = [p for p in psutil.Process().children(recursive=True) if p not in before]
    assert _wait_gone(new, 5.0) == [], "a test left child processes behind"


# ------------------------------------------------- functions run in workers
def square(x: int) -> int:
    return x * x


def fail_on_3(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"bad item {x}")
    return x


def crash(kind: str) -> None:
    if kind == "exit":
        os._exit(3)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "segfault":
        ctypes.string_at(0)
    elif kind == "sysexit":
        sys.exit(4)


def crash_on_5(arg: tuple[int, str]) -> int:
    x, kind = arg
    if x == 5:
        crash(kind)
    return x


def crash_first_time(arg: tuple[int, str]) -> int:
    x, marker = arg
    if x == 2 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(9)
    return x


def fail_first_time(arg: tuple[int, str]) -> int:
    x, marker = arg
    if x == 1 and not os.path.exists(marker):
        Path(marker).touch()
        raise ConnectionError("flaky")
    return x


def log_and_crash(arg: tuple[int, str]) -> int:
    x, log = arg
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == 13:
        os._exit(5)
    return x


def hang_on_3(x: int) -> int:
    if x == 3:
        time.sleep(3600)
    return x


def sleepy(x: int) -> int:
    time.sleep(0.001 * (x % 4))
    return x


def return_lock(x: int) -> Any:
    return threading.Lock() if x == 2 else x


def identity(x: Any) -> Any:
    return x


def pid_of(x: int) -> int:
    return os.getpid()


_STATE: int | None = None


def init_state(offset: int) -> None:
    global _STATE
    _STATE = os.getpid() + offset


def read_state(x: int) -> tuple[int | None, int]:
    return _STATE, os.getpid()


def init_fails() -> None:
    raise RuntimeError("no database today")


def init_slowly(seconds: float) -> None:
    time.sleep(seconds)  # the workload: a model that takes a while to load


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle calls cls(msg): wrong arity
        super().__init__(f"{a}/{b}")


def raise_unpicklable(x: int) -> int:
    raise Unpicklable(x, x)


def _explode() -> None:
    raise RuntimeError("this item does not unpickle")


class UnpicklesBadly:
    """Pickles fine in the driver, fails to unpickle in the worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def burn(ms: float) -> float:
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return ms


def _rebuild_outside(message: str, driver_pid: int) -> BaseException:
    if os.getpid() == driver_pid:
        raise RuntimeError("this exception does not unpickle in the driver")
    return DriverCannotRead(message, driver_pid)


class DriverCannotRead(Exception):
    """Pickles and unpickles in a worker; does not unpickle in the driver."""

    def __init__(self, message: str, driver_pid: int) -> None:
        super().__init__(message)
        self.driver_pid = driver_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_outside, (str(self), self.driver_pid))


def raise_driver_cannot_read_on_3(arg: tuple[int, int]) -> int:
    x, driver_pid = arg
    if x == 3:
        raise DriverCannotRead(f"item {x}", driver_pid)
    return x


def returns_badly_on_3(x: int) -> Any:
    return UnpicklesBadly() if x == 3 else x


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Bounded poll, in a worker, for something another process does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.005)


def start_child_and_wait(arg: tuple[int, str]) -> int:
    """Item 0 starts a grandchild (``sleep 60``), records its pid and waits for it."""
    x, pid_file = arg
    if x == 0:
        child = subprocess.Popen(["sleep", "60"])
        Path(pid_file).write_text(str(child.pid))
        child.wait()
    return x


def start_child_and_return(pid_file: str) -> int:
    """Leaves an orphan behind: ``sleep 60``, not waited for."""
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    return child.pid


def fail_once_the_child_runs(arg: tuple[str, str]) -> int:
    role, pid_file = arg
    if role == "child":
        return start_child_and_wait((0, pid_file))
    _wait_for(lambda: os.path.exists(pid_file), "the grandchild's pid file")
    raise ValueError("the batch fails while another item waits on its child process")


def _stop_flag_is_set() -> bool:
    """Read the pool's stop flag from inside an item (the memfd every worker maps)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:shoal-stop-flag"):
            return os.pread(int(fd), 8, 0) != bytes(8)  # a job's number: it stopped
    raise RuntimeError("no stop flag in this worker")


def log_fail_or_wait_for_stop(arg: tuple[int, str]) -> int:
    """Item 0 fails at once; item 5 (first of the other worker's chunk) waits
    until the driver has set the stop flag; every item logs that it started."""
    x, log = arg
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == 0:
        _wait_for(lambda: "5" in Path(log).read_text().split(), "item 5 to start")
        raise ValueError("item 0 fails")
    if x == 5:
        _wait_for(_stop_flag_is_set, "the stop flag")
    return x


def log_and_fail_on_3(arg: tuple[int, str]) -> int:
    x, log = arg
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == 3:
        raise ValueError("item 3 fails")
    return x


def _gone(pid: int) -> bool:
    try:
        return _wait_gone([psutil.Process(pid)]) == []
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------ engine behaviours
def test_values_in_order(opts: dict[str, Any]) -> None:
    assert shoal.map(sleepy, range(40), **opts) == list(range(40))


def test_all_or_nothing_raises_the_item_error(opts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"bad item 1?3\b") as info:  # whichever settles first
        shoal.map(fail_on_3, range(20), **opts)
    assert isinstance(info.value.__cause__, shoal.RemoteTraceback)
    assert "fail_on_3" in str(info.value.__cause__)


def test_skip_failed(opts: dict[str, Any]) -> None:
    out = shoal.map(fail_on_3, range(25), on_error="skip_failed", **opts)
    assert out == [x for x in range(25) if x % 10 != 3]


def test_collect_errors(opts: dict[str, Any]) -> None:
    report = shoal.run(fail_on_3, range(25), **opts)
    assert [r.index for r in report.results] == list(range(25))
    assert [f.index for f in report.failures] == [3, 13, 23]
    failure = report.failures[0]
    assert isinstance(failure.error, ValueError)
    assert "fail_on_3" in failure.traceback
    assert all(r.worker.startswith("pid:") for r in report.results)


def test_retries(opts: dict[str, Any], tmp_path: Path) -> None:
    marker = str(tmp_path / "failed-once")
    report = shoal.run(fail_first_time, [(x, marker) for x in range(6)], retries=1, **opts)
    assert [r.value for r in report.results] == list(range(6))
    assert report.results[1].attempts == 2


@pytest.mark.parametrize("ordered", [True, False])
def test_imap(opts: dict[str, Any], ordered: bool) -> None:
    got = [r.value for r in shoal.imap(sleepy, range(30), ordered=ordered, **opts)]
    assert (got if ordered else sorted(got, key=lambda v: v or 0)) == list(range(30))


def test_generator_input(opts: dict[str, Any]) -> None:
    def gen() -> Iterator[int]:
        yield from range(50)

    assert shoal.map(square, gen(), **opts) == [x * x for x in range(50)]


def test_async_function() -> None:
    values: list[Any] = shoal.map(async_double, range(5), backend="processes", workers=2)
    assert values == [0, 2, 4, 6, 8]


# ------------------------------------------------------------- pickling
def test_async_consumer() -> None:
    async def main() -> list[Any]:
        return await shoal.amap(square, range(10), backend="processes", workers=2)

    assert asyncio.run(main()) == [x * x for x in range(10)]


def test_lambdas_and_closures_run_in_workers() -> None:
    offset = 7

    def add(x: int) -> int:
        return x + offset

    assert shoal.map(add, range(5), backend="processes", workers=2) == [7, 8, 9, 10, 11]
    assert shoal.map(lambda x: -x, range(3), backend="processes") == [0, -1, -2]


MAIN_SCRIPT = """
    import json, sys, threading
    import shoal

    class Box:
        def __init__(self, v):
            self.v = v

    def work(x):
        return Box(x.v * 10)

    if __name__ == "__main__":
        if sys.argv[1] == "threaded":  # a thread in the driver: the fork server is exec'd
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        boxes = shoal.map(work, [Box(1), Box(2)], backend="processes", workers=2)
        doubled = shoal.map(lambda b: b.v * 2, [Box(3)], backend="processes", workers=1)
        print(json.dumps([[isinstance(b, Box), b.v] for b in boxes] + [doubled]))
"""


@pytest.mark.parametrize("driver", ["single-threaded", "threaded"])
def test_functions_and_classes_of_main(tmp_path: Path, driver: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    out = subprocess.run([sys.executable, str(script), driver], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[[true, 10], [true, 20], [6]]"


def test_unpicklable_fn_fails_before_any_item(tmp_path: Path) -> None:
    lock = threading.Lock()
    ran = tmp_path / "ran"

    def uses_lock(x: int) -> int:
        ran.touch()
        with lock:
            return x

    with pytest.raises(shoal.NotPicklable, match=r"fn .*uses_lock.* cannot be pickled"):
        shoal.map(uses_lock, range(3), backend="processes")
    assert not ran.exists()


def test_unpicklable_initializer() -> None:
    lock = threading.Lock()
    with pytest.raises(shoal.NotPicklable, match="initializer"):
        shoal.map(square, range(3), backend="processes", initializer=lambda: lock)


def test_unpicklable_item_fails_alone(opts: dict[str, Any]) -> None:
    items: list[Any] = [0, 1, threading.Lock(), 3, 4, threading.Lock(), 6]
    report = shoal.run(identity, items, **opts)
    assert [r.index for r in report.failures] == [2, 5]
    assert all(isinstance(r.error, shoal.NotPicklable) for r in report.failures)
    assert "item 2 (a lock) cannot be pickled" in str(report.failures[0].error)
    assert [r.value for r in report.results if r.ok] == [0, 1, 3, 4, 6]


def test_unpicklable_result_fails_alone(opts: dict[str, Any]) -> None:
    report = shoal.run(return_lock, range(6), **opts)
    assert [r.index for r in report.failures] == [2]
    assert isinstance(report.failures[0].error, shoal.NotPicklable)
    assert "the result (a lock) cannot be pickled" in str(report.failures[0].error)
    assert [r.value for r in report.results if r.ok] == [0, 1, 3, 4, 5]


def test_item_that_does_not_unpickle_in_the_worker_fails_alone() -> None:
    items: list[Any] = [0, 1, UnpicklesBadly(), 3]
    report = shoal.run(identity, items, backend="processes", workers=2, chunk_size=1)
    assert [r.index for r in report.failures] == [2]
    error = report.failures[0].error
    assert isinstance(error, shoal.NotPicklable)
    assert "could not be unpickled in the worker" in str(error)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_item_that_does_not_unpickle_in_the_worker_fails_alone_in_any_chunk(
        opts: dict[str, Any], chunk_size: int) -> None:
    items: list[Any] = [0, 1, 2, UnpicklesBadly(), 4, 5, 6, 7, 8, 9]
    report = shoal.run(identity, items, **{**opts, "chunk_size": chunk_size})
    assert [r.index for r in report.failures] == [3]
    assert "could not be unpickled in the worker" in str(report.failures[0].error)
    assert [r.value for r in report.results if r.ok] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_result_that_does_not_unpickle_in_the_driver_fails_alone(
        opts: dict[str, Any], chunk_size: int) -> None:
    report = shoal.run(returns_badly_on_3, range(10), **{**opts, "chunk_size": chunk_size})
    assert [r.index for r in report.failures] == [3]
    error = report.failures[0].error
    assert isinstance(error, shoal.NotPicklable)
    assert "could not be unpickled in the driver" in str(error)
    assert "this item does not unpickle" in str(error)
    assert [r.value for r in report.results if r.ok] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_unpicklable_exception_becomes_remote_error() -> None:
    report = shoal.run(raise_unpicklable, [1], backend="processes", workers=1)
    error = report.failures[0].error
    assert isinstance(error, shoal.RemoteError)
    assert error.type_name.endswith("Unpicklable") and "could not be pickled" in str(error)
    assert "raise_unpicklable" in report.failures[0].traceback


# ------------------------------------------------------- crash isolation
def test_system_exit_fails_its_item_and_the_worker_goes_on() -> None:
    report = shoal.run(crash_on_5, [(x, "sysexit") for x in range(12)], backend="processes",
                       workers=1)
    assert [r.index for r in report.failures] == [5]
    error = report.failures[0].error
    assert isinstance(error, SystemExit) and error.code == 4
    assert len({r.worker for r in report.results}) == 1  # the same worker ran all 12


@pytest.mark.parametrize(
    ("kind", "how"),
    [
        ("exit", "exited with code 3"),
        ("sigkill", "died with signal SIGKILL (-9)"),
        ("segfault", "died with signal SIGSEGV (-11)"),
    ],
)
def test_a_crash_fails_only_its_item(kind: str, how: str) -> None:
    report = shoal.run(crash_on_5, [(x, kind) for x in range(12)], backend="processes",
                       workers=2)
    assert [r.index for r in report.failures] == [5]
    error = report.failures[0].error
    assert isinstance(error, shoal.WorkerCrashed)
    assert f"{how} while running item 5" in str(error)
    assert [r.value for r in report.results if r.ok] == [x for x in range(12) if x != 5]


def test_crashed_item_is_retried(tmp_path: Path) -> None:
    marker = str(tmp_path / "crashed-once")
    report = shoal.run(crash_first_time, [(x, marker) for x in range(5)], backend="processes",
                       workers=2, chunk_size=1, retries=1)
    assert [r.value for r in report.results] == list(range(5))
    assert report.results[2].attempts == 2


def test_crash_without_retries_fails_the_item(tmp_path: Path) -> None:
    marker = str(tmp_path / "crashed-once")
    report = shoal.run(crash_first_time, [(x, marker) for x in range(5)], backend="processes",
                       workers=2, chunk_size=1)
    assert [r.index for r in report.failures] == [2]
    assert report.failures[0].error.exitcode == 9  # type: ignore[union-attr]


def test_chunked_crash_reruns_the_innocent_items(tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    items = [(x, str(log)) for x in range(30)]
    report = shoal.run(log_and_crash, items, backend="processes", workers=2, chunk_size=10)
    assert [r.index for r in report.failures] == [13]
    assert [r.value for r in report.results if r.ok] == [x for x in range(30) if x != 13]
    runs = [int(line) for line in log.read_text().split()]
    assert runs.count(13) == 2  # the batch crash, then the item-by-item re-run
    assert runs.count(14) == 1 and runs.count(29) == 1  # after the culprit: run once


def test_workers_that_cannot_start_break_the_run() -> None:
    with pytest.raises(RuntimeError, match="no database today") as info:
        shoal.map(square, range(5), backend="processes", workers=2, initializer=init_fails)
    assert isinstance(info.value.__cause__, shoal.RemoteTraceback)


# -------------------------------------------------------------- timeouts
@pytest.mark.timeout(30)
def test_a_hung_item_times_out_and_its_worker_is_replaced() -> None:
    report = shoal.run(hang_on_3, range(12), backend="processes", workers=2, timeout=1.0)
    assert [r.index for r in report.failures] == [3]
    assert isinstance(report.failures[0].error, TimeoutError)
    assert [r.value for r in report.results if r.ok] == [x for x in range(12) if x != 3]


@pytest.mark.timeout(30)
def test_a_timed_out_item_takes_its_child_processes_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    report = shoal.run(start_child_and_wait, [(x, str(pid_file)) for x in range(3)],
                       backend="processes", workers=1, timeout=1.0)
    assert [r.index for r in report.failures] == [0]
    assert isinstance(report.failures[0].error, TimeoutError)
    assert _gone(int(pid_file.read_text()))  # killed with its worker's process group


@pytest.mark.timeout(30)
def test_a_cancelled_run_takes_the_child_processes_of_running_items(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    with pytest.raises(ValueError, match="another item waits on its child"):
        shoal.map(fail_once_the_child_runs, [("child", str(pid_file)), ("fail", str(pid_file))],
                  backend="processes", workers=2, chunk_size=1)
    assert _gone(int(pid_file.read_text()))


def test_processes_an_item_leaves_behind_end_with_the_pool(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan"
    [pid] = shoal.map(start_child_and_return, [str(pid_file)], backend="processes", workers=1)
    assert _gone(pid)


# ------------------------------------------------------------ all_or_nothing
@pytest.mark.parametrize("mode", [{}, {"timeout": 60}], ids=["batch", "stream"])
def test_all_or_nothing_stops_a_chunk_at_its_first_failure(tmp_path: Path,
                                                           mode: dict[str, Any]) -> None:
    log = tmp_path / "ran.log"
    with pytest.raises(ValueError, match="item 3 fails"):
        shoal.map(log_and_fail_on_3, [(x, str(log)) for x in range(10)], backend="processes",
                  workers=1, chunk_size=10, **mode)
    assert log.read_text().split() == ["0", "1", "2", "3"]


@pytest.mark.timeout(30)
def test_a_stopped_chunk_is_known_even_when_its_report_does_not_unpickle() -> None:
    # all_or_nothing with a retry: the worker stops its chunk at item 3, whose
    # report the driver cannot read; the retry must still run (on the same,
    # only worker) and the run end with the item's failure.
    with pytest.raises(shoal.NotPicklable, match="could not be unpickled in the driver"):
        shoal.map(raise_driver_cannot_read_on_3, [(x, os.getpid()) for x in range(10)],
                  backend="processes", workers=1, chunk_size=10, timeout=60, retries=1)


@pytest.mark.timeout(30)
def test_a_failure_the_driver_cannot_read_in_a_chunk_still_ends_the_run() -> None:
    # Without retries the failing worker sets the stop flag itself; its batch
    # report does not unpickle, so the engine re-runs the chunk item by item
    # to find the failure: the flag must not stop that re-run.
    with pytest.raises(shoal.NotPicklable, match="could not be unpickled in the driver"):
        shoal.map(raise_driver_cannot_read_on_3, [(x, os.getpid()) for x in range(10)],
                  backend="processes", workers=2, chunk_size=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [{}, {"timeout": 60}], ids=["batch", "stream"])
def test_all_or_nothing_starts_no_item_on_any_worker_once_a_failure_is_known(
        tmp_path: Path, mode: dict[str, Any]) -> None:
    log = tmp_path / "ran.log"
    with pytest.raises(ValueError, match="item 0 fails"):
        shoal.map(log_fail_or_wait_for_stop, [(x, str(log)) for x in range(20)],
                  backend="processes", workers=2, chunk_size=5, **mode)
    ran = sorted(int(x) for x in log.read_text().split())
    # item 5 was running when item 0 failed; nothing after it started anywhere
    assert ran == [0, 5]


@pytest.mark.timeout(30)
def test_a_slow_initializer_does_not_count_against_the_first_items_timeout() -> None:
    # Workers start when a task waits; the task must not be on the clock
    # while its worker starts (here: 1.5 s of initializer, timeout=1).
    report = shoal.run(square, range(4), backend="processes", workers=2, timeout=1.0,
                       initializer=init_slowly, initargs=(1.5,))
    assert report.failures == []
    assert [r.value for r in report.results] == [0, 1, 4, 9]


# ------------------------------------------------------------ life-cycle
def test_initializer_runs_once_per_worker() -> None:
    pairs = shoal.map(read_state, range(20), backend="processes", workers=2,
                      initializer=init_state, initargs=(1000,))
    assert all(state == pid + 1000 for state, pid in pairs)
    assert 1 <= len({pid for _, pid in pairs}) <= 2


def test_max_items_per_worker_recycles_workers() -> None:
    pids = shoal.map(pid_of, range(12), backend="processes", workers=2, max_items_per_worker=3)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert len(counts) >= 4
    assert max(counts.values()) <= 3


def test_default_workers_is_cpu_count() -> None:
    from shoal._backends._base import cpu_count
    from shoal._backends._processes.pool import ProcessBackend

    assert ProcessBackend.traits.default_workers() == cpu_count()


def test_exec_path_when_the_driver_has_threads() -> None:
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert not fork_is_safe()
        assert shoal.map(lambda x: x + 1, range(6), backend="processes", workers=2) == [
            1, 2, 3, 4, 5, 6,
        ]
    finally:
        stop.set()
        helper.join()


# ------------------------------------------------------------- no orphans
def test_no_child_process_after_a_run() -> None:
    before = set(psutil.Process().children(recursive=True))
    shoal.map(square, range(100), backend="processes", workers=2)
    assert set(psutil.Process().children(recursive=True)) <= before


def test_no_child_process_after_all_or_nothing_stops_the_run() -> None:
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(ValueError):
        shoal.map(fail_on_3, range(100), backend="processes", workers=2)
    assert set(psutil.Process().children(recursive=True)) <= before


DRIVER_SCRIPT = """
    import os, signal, sys, threading, time
    import shoal

    # Ctrl-C raises KeyboardInterrupt even if the test run was started with
    # SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow(x):
        os.write(1, b"started\\n")  # one write: the two workers' lines never interleave
        time.sleep(600)
        return x

    if __name__ == "__main__":
        if sys.argv[1] == "threaded":  # a thread in the driver: the fork server is exec'd
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        try:
            shoal.map(slow, range(8), backend="processes", workers=2, chunk_size=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
"""


@pytest.fixture
def start_driver(tmp_path: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen[str],
                                                                    list[psutil.Process]]]]:
    """Run DRIVER_SCRIPT until a worker runs an item; kill what is left at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(driver: str) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(DRIVER_SCRIPT))
        proc = subprocess.Popen([sys.executable, str(script), driver],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"  # a worker is running an item
        return proc, psutil.Process(proc.pid).children(recursive=True)

    yield start
    for proc in started:
        if proc.poll() is None:  # the test failed half-way: do not leave it running
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("driver", ["single-threaded", "threaded"])
def test_ctrl_c_stops_the_run_and_leaves_no_process(start_driver: Any, driver: str) -> None:
    proc, descendants = start_driver(driver)
    assert len(descendants) >= 2  # the fork server and at least one worker
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert "interrupted" in out
    assert _wait_gone(descendants) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("driver", ["single-threaded", "threaded"])
def test_workers_exit_when_the_driver_is_killed(start_driver: Any, driver: str) -> None:
    proc, descendants = start_driver(driver)
    assert len(descendants) >= 2
    proc.kill()
    proc.communicate(timeout=20)
    assert _wait_gone(descendants) == []


# ------------------------------------------------------------ pure policy
def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "died with signal SIGKILL (-9)"


# ------------------------------------------------------------- auto probe
def test_auto_chooses_processes_for_cpu_bound_work() -> None:
    report = shoal.run(burn, [5.0] * 60)
    assert report.backend == "processes"
    assert "CPU" in report.backend_reason


def test_claims_skip_a_chunk_whose_ticket_the_driver_took_back() -> None:
    read_end, write_end = claim_pipe()
    try:
        claims = Claims(read_end)
        for ticket in (1, 2, 3):
            put_ticket(write_end, ticket)
        assert claims.claim_next()  # chunk 1: its ticket is there
        assert take_ticket(read_end) == 2  # the driver steals chunk 2
        assert not claims.claim_next()  # chunk 2: the worker finds ticket 3 and keeps it
        assert take_ticket(read_end) is None  # so the driver cannot steal chunk 3 now
        assert claims.claim_next()  # chunk 3 runs
        put_ticket(write_end, 4)
        assert take_ticket(read_end) == 4
        assert not claims.claim_next()  # chunk 4: no ticket left, stolen
    finally:
        os.close(read_end)
        os.close(write_end)


class _Reads:
    """A stop flag's reader that counts its reads, and says stop from read ``stop_at`` on."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.count = 0
        self.stop_at = stop_at

    def __call__(self) -> bool:
        self.count += 1
        return self.stop_at is not None and self.count >= self.stop_at


def test_a_worker_reads_the_stop_flag_between_stretches_of_tiny_items() -> None:
    reads = _Reads()
    out = run_stoppable(square, range(200_000), reads)
    assert out.values == [x * x for x in range(200_000)] and not out.stopped
    assert reads.count < 1000  # about once a millisecond of items, not once an item


def test_a_worker_starts_no_item_once_the_stop_flag_is_set() -> None:
    out = run_stoppable(burn, [2.0] * 10, _Reads(stop_at=3))  # slow: read before each item
    assert out.values == [2.0, 2.0] and out.stopped


def test_a_worker_stops_its_chunk_at_its_first_failure() -> None:
    out = run_stoppable(fail_on_3, range(100), _Reads())
    assert out.values == [0, 1, 2, None] and out.stopped
    assert out.errors is not None and isinstance(out.errors[3], ValueError)


def test_the_stop_flag_holds_the_number_of_the_run_that_stopped() -> None:
    flag = StopFlag.create()
    try:
        assert not flag.stopped(1)
        flag.stop(1)  # say a worker of run 1 sets it after run 2 has begun:
        assert flag.stopped(1) and not flag.stopped(2)  # run 2 goes on
    finally:
        flag.close()


def fail_on_5000(x: int) -> int:
    if x == 5000:
        raise ValueError("item 5000 fails")
    return x


@pytest.mark.parametrize("as_list", [False, True])
def test_a_stoppable_chunk_keeps_every_value_in_order(as_list: bool) -> None:
    items: Any = list(range(200_000)) if as_list else range(200_000)
    out = run_stoppable(square, items, _Reads())
    assert out.values == [x * x for x in range(200_000)] and not out.stopped
    out = run_stoppable(fail_on_5000, items, _Reads())  # a failure past the first stretches
    assert out.values == [*range(5000), None] and out.stopped
    assert out.errors is not None and list(out.errors) == [5000]


def stdin_and_group(x: int) -> tuple[str, bool]:
    return os.readlink("/proc/self/fd/0"), os.getpgid(0) == os.getpid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_leads_its_own_process_group_and_never_reads_the_terminal() -> None:
    out = shoal.map(stdin_and_group, range(2), backend="processes", workers=1)
    assert out == [("/dev/null", True)] * 2
