"""What shoal.Executor adds to concurrent.futures, and where it deliberately differs.

Each difference listed in docs/executor.md is pinned here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
import workfns


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def children() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


# ------------------------------------------------------------ crash isolation
@pytest.mark.timeout(180)
def test_ten_crashes_then_a_thousand_calls_all_succeed() -> None:
    before = children()
    ex = shoal.Executor(2, backend="processes")
    crashed = [ex.submit(workfns.exit_now, 1) for _ in range(10)]
    for f in crashed:
        assert isinstance(f.exception(timeout=60), shoal.WorkerCrashed)
    fs = [ex.submit(pow, i, 2) for i in range(1000)]
    assert [f.result(timeout=60) for f in fs] == [i * i for i in range(1000)]
    ex.shutdown()
    assert children() - before == set()  # no child outlives shutdown


def test_a_killed_worker_fails_only_its_own_future(tmp_path: Path) -> None:
    """A difference: ProcessPoolExecutor breaks for good (BrokenProcessPool)."""
    with shoal.Executor(2, backend="processes") as ex:
        hung = ex.submit(workfns.pid_then_sleep, str(tmp_path), 30)
        pid_file = tmp_path / "pid"
        while not pid_file.exists():
            cf.wait([hung], timeout=0.01)
        others = [ex.submit(pow, 2, i) for i in range(20)]
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert isinstance(hung.exception(timeout=60), shoal.WorkerCrashed)
        assert [f.result(timeout=60) for f in others] == [2**i for i in range(20)]
        assert ex.submit(pow, 2, 8).result(timeout=60) == 256


@pytest.mark.parametrize(("make_call", "error"), [
    (lambda: (workfns.capture, workfns.ErrorAtPickle()), shoal.NotPicklable),
    (lambda: (workfns.capture, workfns.ExitAtUnpickle()), shoal.WorkerCrashed),
    (lambda: (workfns.capture, workfns.ErrorAtUnpickle()), Exception),
    (lambda: (workfns.exit_now, 3), shoal.WorkerCrashed),
    (lambda: (workfns.return_instance, workfns.ErrorAtPickle), Exception),
    (lambda: (workfns.return_instance, workfns.ErrorAtUnpickle), Exception),
], ids=["error-pickling-the-call", "exit-unpickling-the-call", "error-unpickling-the-call",
        "exit-in-the-call", "error-pickling-the-result", "error-unpickling-the-result"])
def test_a_call_that_cannot_cross_fails_alone(make_call: Any, error: type[BaseException]
                                              ) -> None:
    """A difference: the standard pool raises for these calls or breaks for good."""
    with shoal.Executor(2, backend="processes") as ex:
        fn, arg = make_call()
        bad = ex.submit(fn, arg)
        good = ex.submit(pow, 3, 2)
        assert isinstance(bad.exception(timeout=60), error)
        assert good.result(timeout=60) == 9
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32


# ------------------------------------------------------------ timeouts, retries
def test_a_timeout_kills_a_hung_process(tmp_path: Path) -> None:
    with shoal.Executor(2, backend="processes", timeout=0.5) as ex:
        hung = ex.submit(workfns.pid_then_sleep, str(tmp_path), 30)
        assert isinstance(hung.exception(timeout=60), TimeoutError)
        pid = int((tmp_path / "pid").read_text())
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            cf.wait([ex.submit(int)], timeout=1)
        assert not alive(pid)


def test_a_timeout_abandons_a_hung_thread_and_replaces_it() -> None:
    stuck = threading.Event()
    try:
        with shoal.Executor(1, timeout=0.3) as ex:
            hung = ex.submit(stuck.wait)
            assert isinstance(hung.exception(timeout=30), TimeoutError)
            assert ex.submit(pow, 2, 4).result(timeout=30) == 16  # its one worker replaced
    finally:
        stuck.set()


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_retries_with_the_engines_policy(tmp_path: Path, backend: Any) -> None:
    with shoal.Executor(2, backend=backend, retries=1) as ex:
        assert ex.submit(workfns.flaky, (str(tmp_path), 1)).result(timeout=60) == 1
    with shoal.Executor(2, backend=backend) as ex:
        f = ex.submit(workfns.flaky, (str(tmp_path), 2))
        assert isinstance(f.exception(timeout=60), ConnectionError)


# ------------------------------------------------------------ where it runs
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_run_in_executor(backend: Any) -> None:
    async def main(ex: shoal.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(ex, pow, 2, i)
                                           for i in range(10))))

    with shoal.Executor(2, backend=backend) as ex:
        assert asyncio.run(main(ex)) == [2**i for i in range(10)]


def test_an_async_function_gives_its_value() -> None:
    """A difference: ThreadPoolExecutor would hand back the coroutine object."""
    with shoal.Executor(2) as ex:
        assert ex.submit(workfns.asquare, 7).result(timeout=30) == 49


def test_the_asyncio_backend_runs_coroutines_on_one_loop() -> None:
    with shoal.Executor(50, backend="asyncio") as ex:
        fs = [ex.submit(workfns.asleep_then_return, 0.05) for _ in range(100)]
        assert [f.result(timeout=30) for f in fs] == [0.05] * 100
        assert ex.submit(workfns.square, 3).result(timeout=30) == 9
        failed = ex.submit(workfns.fail_on_negative, -1)
        assert isinstance(failed.exception(timeout=30), ValueError)


def test_the_sequential_backend_has_one_worker() -> None:
    with shoal.Executor(backend="sequential") as ex:
        names = {ex.submit(lambda: threading.current_thread().name).result() for _ in range(5)}
    assert len(names) == 1


def test_the_dask_backend(dask_cluster: Any) -> None:
    with shoal.Executor(2, backend="dask", address=dask_cluster.scheduler_address) as ex:
        assert list(ex.map(workfns.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        assert isinstance(ex.submit(workfns.fail_on_negative, -1).exception(timeout=60),
                          ValueError)


# ------------------------------------------------------------ completion
def test_a_call_completes_when_it_returns_in_this_process() -> None:
    with shoal.Executor(1, chunk_size=2) as ex:
        fast, slow = ex.submit(time.sleep, 0), ex.submit(time.sleep, 1.0)
        done, _ = cf.wait([fast], timeout=0.5)
        assert fast in done and not slow.done()


def test_a_process_call_reports_alone_with_chunk_size_1() -> None:
    """A difference: tiny calls sent to processes travel, and are reported, in
    chunks (a fast call may wait for a slow one of its chunk); chunk_size=1
    reports each call alone."""
    with shoal.Executor(2, backend="processes", chunk_size=1) as ex:
        ex.submit(int).result(timeout=60)  # the workers are up
        slow = ex.submit(time.sleep, 2.0)
        fast = ex.submit(time.sleep, 0)
        done, _ = cf.wait([fast], timeout=1.5)
        assert fast in done and not slow.done()


# ------------------------------------------------------------ errors, options
def test_broken_executor_is_both_kinds_of_error() -> None:
    assert issubclass(shoal.BrokenExecutor, cf.BrokenExecutor)
    assert issubclass(shoal.BrokenExecutor, shoal.BrokenBackend)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "auto"}, 'backend="auto" has nothing to measure'),
    ({"ordered": True}, "takes no ordered="),
    ({"on_error": "skip_failed"}, "takes no on_error="),
    ({"checkpoint": "x.db"}, "takes no checkpoint="),
    ({"workers": 3}, "max_workers"),
    ({"timeout": -1}, "timeout must be > 0"),
    ({"retries": "x"}, "retries"),
])
def test_options_it_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(shoal.InvalidOptionError, match=match):
        shoal.Executor(2, **kwargs)


def test_callbacks_may_submit_and_shut_down() -> None:
    ex = shoal.Executor(2)
    second: list[cf.Future[int]] = []
    done = threading.Event()

    def chain(f: cf.Future[int]) -> None:
        second.append(ex.submit(pow, f.result(), 2))
        ex.shutdown(wait=True)  # from the thread that completes futures: must not hang
        done.set()

    ex.submit(pow, 2, 2).add_done_callback(chain)
    assert done.wait(30)
    assert second[0].result(timeout=30) == 16


def test_progress_events_are_delivered() -> None:
    events: list[Any] = []
    with shoal.Executor(2, progress=events.append) as ex:
        list(ex.map(abs, range(-50, 50)))
    assert events and events[-1].done == 100


def test_workers_start_with_the_executor() -> None:
    """A difference: the standard executors start a worker at the first submit."""
    before = set(threading.enumerate())
    with shoal.Executor(2):
        assert [t for t in threading.enumerate() if t not in before
                and t.name.startswith("shoal-") and not t.name.startswith("shoal-executor")]
