"""shoal.Executor against what CPython's Lib/test/test_concurrent_futures covers.

The cases follow the standard library's suite (executor, wait, as_completed,
future, shutdown, initializer, and the process pool's own), written anew for
shoal, on threads and on processes. Where shoal deliberately differs, the
test says so and docs/executor.md lists it. Slow calls are the workload here
(``time.sleep`` in a worker), never a way to wait for something: a test
waits on events, futures or joins.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
import workfns

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)

Make = Callable[..., shoal.Executor]


@pytest.fixture(params=["threads", "processes"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(backend: str) -> Iterator[Make]:
    made: list[shoal.Executor] = []

    def factory(max_workers: int | None = 2, **options: Any) -> shoal.Executor:
        ex = shoal.Executor(max_workers, backend=backend, **options)  # type: ignore[arg-type]
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(make: Make) -> shoal.Executor:
    return make(2)


def done_future(*, result: Any = None, error: BaseException | None = None,
                cancelled: bool = False, notified: bool = True) -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    if cancelled:
        f.cancel()
        if notified:
            f.set_running_or_notify_cancel()
    elif error is not None:
        f.set_exception(error)
    else:
        f.set_result(result)
    return f


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env)


# ================================================================ executor
def test_submit(executor: shoal.Executor) -> None:
    assert executor.submit(pow, 2, 8).result() == 256


def test_submit_keywords(executor: shoal.Executor) -> None:
    assert executor.submit(workfns.mul, 2, y=8).result() == 16
    assert executor.submit(workfns.capture, 1, self=2, fn=3).result() == \
        ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=workfns.capture, arg=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-overload]


def test_map(executor: shoal.Executor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor: shoal.Executor) -> None:
    it = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout(make: Make, backend: str) -> None:
    # On processes a tiny call may share its chunk (and its report) with the
    # slow one: chunk_size=1 reports each call alone (docs/executor.md).
    executor = make(2, chunk_size=1) if backend == "processes" else make(2)
    results: list[None] = []
    with pytest.raises(cf.TimeoutError):
        for r in executor.map(time.sleep, [0, 0, 1.5], timeout=0.5):
            results.append(r)
    assert results == [None, None]


def test_map_submits_without_iteration(executor: shoal.Executor, tmp_path: Path) -> None:
    executor.map(workfns.count_calls, [(str(tmp_path), i) for i in range(10)])
    executor.shutdown(wait=True)
    assert sorted(workfns.calls(tmp_path)) == list(range(10))


def test_shutdown_after_a_short_map(executor: shoal.Executor) -> None:
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_no_stale_references(make: Make, backend: str) -> None:
    if backend == "processes":
        pytest.skip("a process works on a copy: nothing of the caller's to keep alive")
    ex = make(2)
    obj = workfns.Dummy()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    ex.submit(obj.method).result()
    del obj
    gc.collect()
    assert collected.wait(10) and ref() is None


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_must_be_positive(backend: str, number: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        shoal.Executor(number, backend=backend)  # type: ignore[arg-type]


def test_results_are_not_kept(executor: shoal.Executor) -> None:
    for obj in executor.map(workfns.make_dummy, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_default_workers_saturate_like_threadpoolexecutor(make: Make, backend: str) -> None:
    default = min(32, shoal._backends._base.cpu_count() + 4) if backend == "threads" \
        else shoal._backends._base.cpu_count()
    ex = make(None)
    if backend == "processes":
        pids = set(ex.map(workfns.sleep_then_return, [0.05] * (4 * default)))
        pids = {f.result() for f in [ex.submit(os.getpid) for _ in range(8 * default)]}
        assert 1 <= len(pids) <= default
        return
    release = threading.Event()
    started = threading.Semaphore(0)
    names: set[str] = set()

    def block() -> None:
        names.add(threading.current_thread().name)
        started.release()
        release.wait(30)

    futures = [ex.submit(block) for _ in range(3 * default)]
    for _ in range(default):
        assert started.acquire(timeout=30)
    assert len(names) == default
    release.set()
    cf.wait(futures)
    assert len(names) == default


def test_idle_threads_are_reused(make: Make, backend: str) -> None:
    """A difference: calls made one after another use at most two threads, not one
    (a worker that takes a call passes the baton when more may be queued, and
    the call's submitter is already making the next one)."""
    if backend == "processes":
        pytest.skip("threads only")
    ex = make(None)
    names = {ex.submit(lambda: threading.current_thread().name).result() for _ in range(20)}
    assert 1 <= len(names) <= 2


def test_map_timeout_cancels_the_calls_not_started(make: Make, backend: str) -> None:
    if backend == "processes":
        pytest.skip("the log is a list in this process")
    stop = threading.Event()
    log: list[str] = []

    def log_n_wait(ident: str) -> None:
        log.append(f"{ident} started")
        try:
            stop.wait(30)
        finally:
            log.append(f"{ident} stopped")

    ex = make(1)
    first = ex.submit(log_n_wait, "first")
    gen = ex.map(log_n_wait, ["second", "third"], timeout=0)
    assert isinstance(gen, Generator)  # typed as an Iterator; it has close()
    try:
        with pytest.raises(TimeoutError):
            next(gen)
    finally:
        gen.close()
        stop.set()
    first.result()
    ex.shutdown()
    assert log == ["first started", "first stopped"]


# ================================================================ wait
def test_wait_on_the_same_future_twice(executor: shoal.Executor) -> None:
    f = executor.submit(time.sleep, 0.3)
    done, not_done = cf.wait([f, f], return_when=cf.ALL_COMPLETED)
    assert done == {f} and not_done == set()


def test_wait_first_completed(executor: shoal.Executor) -> None:
    cancelled = done_future(cancelled=True, notified=False)
    f1 = executor.submit(workfns.mul, 21, 2)
    f2 = executor.submit(time.sleep, 1.0)
    done, not_done = cf.wait([cancelled, f1, f2], return_when=cf.FIRST_COMPLETED)
    assert done == {f1} and not_done == {cancelled, f2}


def test_wait_first_completed_some_already_completed(executor: shoal.Executor) -> None:
    cancelled, ok = done_future(cancelled=True), done_future(result=42)
    f1 = executor.submit(time.sleep, 1.0)
    done, not_done = cf.wait([cancelled, ok, f1], return_when=cf.FIRST_COMPLETED)
    assert done == {cancelled, ok} and not_done == {f1}


def test_wait_first_exception(make: Make) -> None:
    ex = make(3)
    f1 = ex.submit(workfns.mul, 2, 21)
    f2 = ex.submit(workfns.sleep_and_raise, 0.3)
    f3 = ex.submit(time.sleep, 2)
    fs: list[cf.Future[Any]] = [f1, f2, f3]
    done, not_done = cf.wait(fs, return_when=cf.FIRST_EXCEPTION)
    assert done == {f1, f2} and not_done == {f3}


def test_wait_first_exception_some_already_complete(executor: shoal.Executor) -> None:
    ok, cancelled = done_future(result=1), done_future(cancelled=True)
    pending_cancel = done_future(cancelled=True, notified=False)
    f1 = executor.submit(divmod, 21, 0)
    f2 = executor.submit(time.sleep, 1.0)
    done, not_done = cf.wait([ok, pending_cancel, cancelled, f1, f2],
                             return_when=cf.FIRST_EXCEPTION)
    assert done == {ok, cancelled, f1} and not_done == {pending_cancel, f2}


def test_wait_first_exception_one_already_failed(executor: shoal.Executor) -> None:
    failed = done_future(error=OSError())
    f1 = executor.submit(time.sleep, 1.0)
    done, not_done = cf.wait([failed, f1], return_when=cf.FIRST_EXCEPTION)
    assert done == {failed} and not_done == {f1}


def test_wait_all_completed(executor: shoal.Executor) -> None:
    fixed = [done_future(result=1), done_future(cancelled=True), done_future(error=OSError())]
    f1 = executor.submit(divmod, 2, 0)
    f2 = executor.submit(workfns.mul, 2, 21)
    done, not_done = cf.wait([*fixed, f1, f2], return_when=cf.ALL_COMPLETED)
    assert done == {*fixed, f1, f2} and not_done == set()


def test_wait_timeout(executor: shoal.Executor) -> None:
    fixed = [done_future(cancelled=True), done_future(error=OSError()), done_future(result=1)]
    f = executor.submit(time.sleep, 1.0)
    done, not_done = cf.wait([*fixed, f], timeout=0.05, return_when=cf.ALL_COMPLETED)
    assert done == set(fixed) and not_done == {f}


def test_wait_for_many_pending_calls(make: Make, backend: str) -> None:
    if backend == "processes":
        pytest.skip("threads only: the calls wait on an event of this process")
    event = threading.Event()
    ex = make(4)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        fs = {ex.submit(event.wait, 30) for _ in range(100)}
        event.set()
        done, not_done = cf.wait(fs, return_when=cf.ALL_COMPLETED)
    finally:
        sys.setswitchinterval(old)
    assert done == fs and not not_done


# ================================================================ as_completed
def test_as_completed(executor: shoal.Executor) -> None:
    fixed = {done_future(cancelled=True), done_future(error=OSError()), done_future(result=1)}
    f1 = executor.submit(workfns.mul, 2, 21)
    f2 = executor.submit(workfns.mul, 7, 6)
    assert set(cf.as_completed([*fixed, f1, f2])) == fixed | {f1, f2}


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_times_out(executor: shoal.Executor, timeout: float) -> None:
    fixed = {done_future(cancelled=True), done_future(error=OSError()), done_future(result=1)}
    slow = executor.submit(time.sleep, 1.0)
    seen = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed(fixed | {slow}, timeout):
            seen.add(f)
    assert seen == fixed


def test_as_completed_yields_a_duplicate_once(executor: shoal.Executor) -> None:
    f = executor.submit(time.sleep, 0.2)
    assert list(cf.as_completed([f, f, f])) == [f]


# ================================================================ future
def test_done_callback_with_result(executor: shoal.Executor) -> None:
    got: list[Any] = []
    called = threading.Event()
    f = executor.submit(pow, 2, 5)

    def on_done(fut: cf.Future[int]) -> None:
        got.append(fut.result())
        called.set()

    f.add_done_callback(on_done)
    assert called.wait(30) and got == [32]


def test_done_callback_with_exception(executor: shoal.Executor) -> None:
    got: list[Any] = []
    called = threading.Event()
    f = executor.submit(divmod, 1, 0)

    def on_done(fut: cf.Future[tuple[int, int]]) -> None:
        got.append(type(fut.exception()))
        called.set()

    f.add_done_callback(on_done)
    assert called.wait(30) and got == [ZeroDivisionError]


def test_done_callback_already_done(executor: shoal.Executor) -> None:
    f = executor.submit(pow, 2, 2)
    assert f.result() == 4
    got: list[int] = []
    f.add_done_callback(lambda fut: got.append(fut.result()))
    assert got == [4]  # called at once, on this thread


def test_a_raising_callback_is_logged_and_the_next_still_runs(
        executor: shoal.Executor, caplog: pytest.LogCaptureFixture) -> None:
    called = threading.Event()

    def bad(_: Any) -> None:
        raise RuntimeError("callback failed")

    f = executor.submit(pow, 2, 2)
    with caplog.at_level("ERROR", logger="concurrent.futures"):
        f.add_done_callback(bad)
        f.add_done_callback(lambda _: called.set())
        assert called.wait(30)
    assert "exception calling callback" in caplog.text


def test_cancel_a_queued_call(make: Make, backend: str) -> None:
    ex = make(1)
    running: cf.Future[Any]
    if backend == "threads":
        release = threading.Event()
        running = ex.submit(release.wait, 30)
    else:
        release = None
        running = ex.submit(time.sleep, 1.0)
    while not running.running():  # the worker has taken it; then the queue holds the rest
        cf.wait([running], timeout=0.01)
    # A worker process takes a call ahead of the one it runs (as the standard
    # pool's call queue does): these fill that place, so the next one waits.
    fillers = [ex.submit(pow, 1, 1) for _ in range(5)] if backend == "processes" else []
    queued = ex.submit(pow, 2, 3)
    called = threading.Event()
    queued.add_done_callback(lambda _: called.set())
    assert queued.cancel() and queued.cancelled() and called.is_set()
    with pytest.raises(cf.CancelledError):
        queued.result()
    assert not running.cancel() and running.running()  # a running call is not cancelled
    if release is not None:
        release.set()
    running.result(timeout=30)
    assert [f.result(timeout=30) for f in fillers] == [1] * len(fillers)
    assert ex.submit(pow, 2, 4).result() == 16


def test_result_and_exception_with_timeout(executor: shoal.Executor) -> None:
    f = executor.submit(time.sleep, 1.0)
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.05)
    assert f.result(timeout=30) is None and f.exception() is None


# ================================================================ shutdown
def test_no_submit_after_shutdown(executor: shoal.Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_interpreter_exit_runs_what_was_submitted(tmp_path: Path, backend: str) -> None:
    done = run_script(tmp_path, f"""
        import shoal, workfns
        if __name__ == "__main__":
            ex = shoal.Executor(5, backend="{backend}")
            ex.submit(workfns.sleep_and_print, 0.5, "apple")
    """)
    assert done.stderr == "" and done.stdout.strip() == "apple"


def test_no_submit_after_interpreter_shutdown(tmp_path: Path, backend: str) -> None:
    done = run_script(tmp_path, f"""
        import atexit
        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        import shoal
        if __name__ == "__main__":
            ex = shoal.Executor(5, backend="{backend}")
            ex.submit(id, 42).result()
    """)
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in done.stderr
    assert done.stdout.strip() == "runtime-error"


def test_shutdown_waits_for_every_call(executor: shoal.Executor) -> None:
    fs = [executor.submit(time.sleep, 0.01) for _ in range(50)]
    executor.shutdown()
    assert all(f.done() for f in fs)
    for f in fs:
        f.result()


def test_shutdown_cancel_futures(make: Make) -> None:
    ex = make(2)
    fs = [ex.submit(time.sleep, 0.05) for _ in range(50)]
    while not (fs[0].running() or fs[0].done()):  # a worker has taken some calls
        cf.wait(fs[:1], timeout=0.01)
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20 and others
    for f in others:
        assert f.done() and f.exception() is None


def test_shutdown_without_wait_at_exit(tmp_path: Path, backend: str) -> None:
    done = run_script(tmp_path, f"""
        import shoal, workfns
        if __name__ == "__main__":
            ex = shoal.Executor(3, backend="{backend}")
            ex.submit(workfns.sleep_and_print, 0.5, "apple")
            ex.shutdown(wait=False)
    """)
    assert done.stderr == "" and done.stdout.strip() == "apple"


def test_shutdown_after_a_cancelled_call(make: Make) -> None:
    ex = make(1)
    ex.submit(int).result()
    ex.submit(int).cancel()
    ex.shutdown(wait=True)  # returns (the per-test timeout would catch a hang)


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before]


def test_threads_end_with_shutdown(backend: str) -> None:
    before = set(threading.enumerate())
    ex = shoal.Executor(3, backend=backend)  # type: ignore[arg-type]
    assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert _new_threads(before)
    ex.shutdown()
    assert _new_threads(before) == []


def test_context_manager_shuts_down(backend: str) -> None:
    before = set(threading.enumerate())
    with shoal.Executor(5, backend=backend) as ex:  # type: ignore[arg-type]
        assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert _new_threads(before) == []


def test_garbage_collected_executor_finishes_its_calls(backend: str) -> None:
    before = set(threading.enumerate())
    ex = shoal.Executor(5, backend=backend)  # type: ignore[arg-type]
    res = ex.map(abs, range(-5, 5))
    del ex
    gc.collect()
    for t in _new_threads(before):
        t.join(30)
        assert not t.is_alive()
    assert list(res) == [abs(v) for v in range(-5, 5)]


def test_shutdown_without_wait_still_finishes(backend: str) -> None:
    before = set(threading.enumerate())
    ex = shoal.Executor(5, backend=backend)  # type: ignore[arg-type]
    res = ex.map(abs, range(-5, 5))
    ex.shutdown(wait=False)
    for t in _new_threads(before):
        t.join(30)
        assert not t.is_alive()
    assert list(res) == [abs(v) for v in range(-5, 5)]


def test_cancel_futures_without_wait_at_exit(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        import shoal, workfns
        if __name__ == "__main__":
            ex = shoal.Executor()
            ex.submit(workfns.sleep_and_print, 0.1, "apple")
            ex.shutdown(wait=False, cancel_futures=True)
    """)
    assert done.stderr == "" and done.stdout.strip() in ("apple", "")


def test_no_child_process_outlives_shutdown() -> None:
    me = psutil.Process()
    before = set(me.children(recursive=True))
    ex = shoal.Executor(2, backend="processes")
    pids = {f.result() for f in [ex.submit(os.getpid) for _ in range(20)]}
    assert pids and os.getpid() not in pids
    ex.shutdown()
    assert set(me.children(recursive=True)) - before == set()


# ================================================================ initializer
def test_initializer_runs_on_every_worker(make: Make) -> None:
    ex = make(2, initializer=workfns.env_init, initargs=("initialized",))
    fs = [ex.submit(workfns.env_status) for _ in range(20)]
    assert {f.result() for f in fs} == {"initialized"}


def test_a_failing_initializer_breaks_the_executor(make: Make) -> None:
    ex = make(2, initializer=workfns.failing_init)
    try:
        future = ex.submit(workfns.env_status)
    except cf.BrokenExecutor:
        pass  # broken already
    else:
        with pytest.raises(cf.BrokenExecutor) as info:
            future.result(timeout=30)
        assert isinstance(info.value.__cause__, ValueError)  # the initializer's error
    with pytest.raises(cf.BrokenExecutor):
        ex.submit(workfns.env_status)


# ================================================================ processes
def _raise_at_line() -> None:
    raise RuntimeError(123)  # the line a remote traceback must show


def test_traceback_from_the_worker(make: Make, backend: str) -> None:
    if backend == "threads":
        pytest.skip("processes only")
    f = make(1).submit(_raise_at_line)
    with pytest.raises(RuntimeError) as info:
        f.result()
    assert info.value.args == (123,)
    cause = info.value.__cause__
    assert isinstance(cause, shoal.RemoteTraceback)
    assert "the line a remote traceback must show" in str(cause)


def test_map_chunksize_is_accepted_and_ignored(executor: shoal.Executor) -> None:
    """A difference: the engine sizes chunks; ProcessPoolExecutor refuses chunksize < 1."""
    ref = list(map(pow, range(40), range(40)))
    for size in (6, 40, 50, -1):
        assert list(executor.map(pow, range(40), range(40), chunksize=size)) == ref


def test_max_items_per_worker_replaces_a_process(make: Make, backend: str) -> None:
    if backend == "threads":
        pytest.skip("processes only")
    ex = make(1, max_items_per_worker=3)
    pids = [ex.submit(os.getpid).result() for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
