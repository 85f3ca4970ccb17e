"""shoal.Pool: workers kept between calls, options per pool and per call, and closing.

Warm threads are observed by their names (``ItemResult.worker``) and by
counting initializer calls; nothing waits on a sleep.
"""

from __future__ import annotations

import _thread
import asyncio
import gc
import operator
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
import workfns
from shoal._backends import warm_class
from shoal._core.api import make_run
from shoal._core.pool import _Lease, _LeasedIterator


@pytest.fixture
def no_new_threads() -> Iterator[None]:
    """The test leaves no thread behind that it started (joined, with a bound)."""
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        t.join(10)
        assert not t.is_alive(), f"thread {t.name} outlived the test"


def workers_of(report: shoal.BatchReport[Any]) -> set[str]:
    return {r.worker for r in report.results}


class InitCounter:
    """An initializer that counts its calls and the threads it ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: list[str] = []

    def __call__(self) -> None:
        with self.lock:
            self.threads.append(threading.current_thread().name)


# ------------------------------------------------------------ warm threads
def test_threads_stay_up_between_calls(no_new_threads: None) -> None:
    release = threading.Barrier(3)

    def meet(x: int) -> int:  # three items that must run at once: three threads
        release.wait(10)
        return x

    with shoal.Pool(backend="threads", workers=3) as pool:
        first = pool.run(meet, range(3), chunk_size=1)
        release.reset()
        second = pool.run(meet, range(3), chunk_size=1)
        assert first.values == second.values == [0, 1, 2]
        assert len(workers_of(first)) == 3
        assert workers_of(second) == workers_of(first)  # the same threads served both


def test_initializer_runs_once_per_worker_per_pool(no_new_threads: None) -> None:
    init = InitCounter()
    with shoal.Pool(backend="threads", workers=3, initializer=init) as pool:
        used: set[str] = set()
        for _ in range(5):
            used |= workers_of(pool.run(workfns.sleep_then_return, [0.001] * 12))
    assert sorted(init.threads) == sorted(used)  # once per thread, not once per call
    assert 1 <= len(init.threads) <= 3


def test_per_call_options_override_the_pools_defaults() -> None:
    with shoal.Pool(backend="threads", workers=2, on_error="skip_failed") as pool:
        assert pool.map(workfns.fail_on_negative, [1, -1, 2]) == [10, 20]
        collected = pool.map(workfns.fail_on_negative, [1, -1], on_error="collect_errors")
        assert collected[0] == 10 and isinstance(collected[1], ValueError)
        with pytest.raises(ValueError, match="negative item -1"):
            pool.map(workfns.fail_on_negative, [1, -1], on_error="all_or_nothing")


def test_pool_retries_default_applies_to_every_call(tmp_path: Path) -> None:
    with shoal.Pool(backend="threads", workers=2, retries=1) as pool:
        assert pool.map(workfns.flaky, [(str(tmp_path), 1), (str(tmp_path), 2)]) == [1, 2]
        report = pool.run(workfns.flaky, [(str(tmp_path), 3)], retries=0)
        assert report.failed == 1  # the call's own retries=0 wins


@pytest.mark.parametrize("name", ["workers", "initializer", "initargs", "address",
                                  "max_items_per_worker", "backend_options"])
def test_worker_options_are_refused_per_call(name: str) -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        with pytest.raises(shoal.InvalidOptionError,
                           match=f"{name} belongs to the pool's workers.*shoal.Pool"):
            pool.map(workfns.square, [1], **{name: None})  # type: ignore[call-overload]


def test_backend_per_call_only_on_an_auto_pool(no_new_threads: None) -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        with pytest.raises(shoal.InvalidOptionError, match="only a pool made with backend='auto'"):
            pool.map(workfns.square, [1], backend="sequential")
    with shoal.Pool(workers=2) as pool:
        assert pool.run(workfns.square, [1, 2], backend="sequential").backend == "sequential"
        threads = pool.run(workfns.square, [3], backend="threads")
        assert threads.backend == "threads"
        again = pool.run(workfns.square, [4], backend="threads")
        assert workers_of(again) == workers_of(threads)


def test_bad_options_are_refused_when_the_pool_is_made() -> None:
    with pytest.raises(shoal.InvalidOptionError, match="did you mean 'timeout'"):
        shoal.Pool(backend="threads", timout=3)  # type: ignore[call-arg]
    with pytest.raises(shoal.InvalidOptionError, match="address is the Dask scheduler"):
        shoal.Pool(backend="threads", address="tcp://127.0.0.1:1")


def test_recycling_counts_items_across_calls(no_new_threads: None) -> None:
    init = InitCounter()
    with shoal.Pool(backend="threads", workers=1, initializer=init,
                    max_items_per_worker=3) as pool:
        seen: list[str] = []
        for _ in range(4):  # 8 items in all on one worker: recycled after 3 and 6
            seen += [r.worker for r in pool.run(workfns.square, [1, 2], chunk_size=1).results]
    assert len(init.threads) == 3
    assert seen[:3] == [init.threads[0]] * 3 and seen[3:6] == [init.threads[1]] * 3


def test_a_timed_out_thread_is_replaced_and_never_waited_for() -> None:
    stuck = threading.Event()

    def hang(x: int) -> int:
        if x == 0:
            stuck.wait()  # released at the end of the test
        return x

    pool = shoal.Pool(backend="threads", workers=2)
    try:
        report = pool.run(hang, [0, 1, 2, 3], timeout=0.5)
        assert [r.ok for r in report.results] == [False, True, True, True]
        assert isinstance(report.results[0].error, TimeoutError)
        after = pool.run(workfns.square, range(6), chunk_size=1)  # full capacity again
        assert after.values == [x * x for x in range(6)]
        pool.close()  # returns although one thread is stuck in hang(0)
    finally:
        stuck.set()


def _sets_of(report: shoal.BatchReport[Any]) -> set[str]:
    """Which warm sets served a report: thread names are shoal-<set>-<n>."""
    return {w.rsplit("-", 1)[0] for w in workers_of(report)}


def test_overlapping_calls_each_get_workers(no_new_threads: None) -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        it = pool.imap(workfns.square, range(100))
        assert isinstance(it, _LeasedIterator)  # typed as an Iterator; it has close()
        first = next(it)
        assert first.value == 0  # the first call still holds its workers
        (one,) = {first.worker.rsplit("-", 1)[0]}
        (two,) = _sets_of(pool.run(workfns.square, [3]))
        assert two != one  # another set for the overlapping call
        it.close()  # its set goes back to the pool
        for _ in range(3):
            assert _sets_of(pool.run(workfns.square, range(20), chunk_size=1)) <= {one, two}


def test_closing_fails_a_call_still_running() -> None:
    pool = shoal.Pool(backend="threads", workers=2)
    it = pool.imap(workfns.square, range(10_000), chunk_size=1)
    assert next(it).value == 0
    pool.close()
    with pytest.raises(shoal.BrokenBackend, match="closed during this call"):
        list(it)
    with pytest.raises(shoal.BrokenBackend, match="Pool is closed"):
        pool.map(workfns.square, [1])
    pool.close()  # twice is harmless


def test_unread_imap_gives_its_workers_back_when_collected(no_new_threads: None) -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        it = pool.imap(workfns.square, range(10))
        del it
        gc.collect()
        assert pool.map(workfns.square, [2]) == [4]


# ------------------------------------------------------------ no thread left
def _pool_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("shoal-")]


def test_close_and_with_leave_no_thread() -> None:
    before = set(threading.enumerate())
    with shoal.Pool(backend="threads", workers=3) as pool:
        pool.map(workfns.sleep_then_return, [0.01] * 6, chunk_size=1)
        assert _pool_threads(before)
    assert _pool_threads(before) == []


def test_an_error_in_the_with_block_closes_without_waiting() -> None:
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="boom"), shoal.Pool(backend="threads") as pool:
        pool.map(workfns.square, range(4))
        raise RuntimeError("boom")
    assert pool.closed
    for t in _pool_threads(before):
        t.join(10)  # told to exit, not waited for
    assert _pool_threads(before) == []


def test_garbage_collection_closes_the_pool() -> None:
    before = set(threading.enumerate())
    pool = shoal.Pool(backend="threads", workers=2)
    pool.map(workfns.square, range(10))
    threads = _pool_threads(before)
    assert threads
    del pool
    gc.collect()
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_ctrl_c_in_a_call_leaves_no_thread() -> None:
    before = set(threading.enumerate())

    def fn(x: int) -> int:
        if x == 5:
            _thread.interrupt_main()
        return x

    with pytest.raises(shoal.BatchInterrupted), shoal.Pool(backend="threads", workers=2) as pool:
        pool.map(fn, range(10_000), chunk_size=1)
    for t in _pool_threads(before):
        t.join(10)
    assert _pool_threads(before) == []


def test_interpreter_exit_leaves_no_thread_or_process(tmp_path: Path) -> None:
    script = tmp_path / "leave_open.py"
    script.write_text(textwrap.dedent("""
        import os, shoal
        def pid(_):
            return os.getpid()
        threads = shoal.Pool(backend="threads", workers=2)   # never closed
        threads.map(abs, range(10))
        procs = shoal.Pool(backend="processes", workers=2)
        print(*sorted(set(procs.map(pid, range(20), chunk_size=1))))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


# ------------------------------------------------------------ what a pool remembers
WARM_KINDS = ["sequential", "threads", "processes", "dask"]


def _first_chunk(pool: shoal.Pool, fn: Any) -> int:
    """The chunk size a call of ``fn`` on ``pool`` would start with (the run
    is made, not started: its backend holds no worker yet)."""
    lease = _Lease(pool._sets)
    try:
        run = make_run(fn, range(10_000), "all_or_nothing", pool._options({}), warm=lease)
        return run.engine.chunk
    finally:
        lease.end()


@pytest.mark.parametrize("backend_opts", WARM_KINDS, indirect=True)
def test_a_call_remembers_what_its_function_took_per_item(backend_opts: dict[str, Any]) -> None:
    with shoal.Pool(**backend_opts, workers=2) as pool:
        lease = _Lease(pool._sets)
        warm = lease(backend_opts["backend"])
        lease.end()
        assert warm is not None and warm.pace(workfns.square) is None
        pool.map(workfns.square, range(300))
        pace = warm.pace(workfns.square)
        assert pace is not None and 0 < pace < 0.1
        assert warm.pace(workfns.add) is None  # per function
        pool.starmap(workfns.add, [(1, 2)] * 20)
        assert warm.pace(workfns.add) is not None  # known by the function, not its wrapper
        first = operator.itemgetter(0)  # cannot be weakly referenced: not remembered, no harm
        assert pool.map(first, [(1,), (2,)]) == [1, 2]
        assert warm.pace(first) is None


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_warm_call_starts_its_chunks_from_the_last_calls_pace(kind: str) -> None:
    opts: dict[str, Any] = {"backend": kind}
    with shoal.Pool(**opts, workers=2) as pool:
        assert _first_chunk(pool, workfns.square) == 1  # nothing known: chunks of one
        pool.map(workfns.square, range(2000))
        # microseconds per item: the next call hands many items at once from the first chunk
        assert _first_chunk(pool, workfns.square) > 8
        assert _first_chunk(pool, workfns.sleep_then_return) == 1  # another function
        assert pool.map(workfns.square, range(2000)) == [x * x for x in range(2000)]


def test_a_slow_function_keeps_small_chunks_on_a_warm_call() -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        pool.map(workfns.sleep_then_return, [0.05] * 4)
        # 50 ms an item is past the chunk target: one item at a time, as before
        assert _first_chunk(pool, workfns.sleep_then_return) == 1


# ------------------------------------------------------------ every backend
def test_a_pool_runs_on_every_backend(backend_opts: dict[str, Any]) -> None:
    with shoal.Pool(**backend_opts, workers=2) as pool:
        assert pool.map(workfns.square, range(20)) == [x * x for x in range(20)]
        assert pool.starmap(workfns.add, [(1, 2), (3, 4)]) == [3, 7]
        report = pool.run(workfns.fail_on_negative, [1, -2, 3])
        assert report.succeeded == 2 and report.failed == 1
        assert [r.value for r in pool.imap(workfns.square, [5, 6])] == [25, 36]


def test_async_calls_on_a_pool(no_new_threads: None) -> None:
    async def main() -> None:
        async with shoal.Pool(backend="threads", workers=2) as pool:
            assert await pool.amap(workfns.square, range(5)) == [0, 1, 4, 9, 16]
            report = await pool.arun_batch(workfns.fail_on_negative, [1, -1])
            assert report.failed == 1
            got = [r.value async for r in pool.aimap(workfns.square, [2, 3])]
            assert got == [4, 9]

    asyncio.run(main())


def test_an_asyncio_pool_serves_calls_on_different_loops() -> None:
    init = InitCounter()
    with shoal.Pool(backend="asyncio", workers=5, initializer=init) as pool:
        assert pool.map(workfns.asquare, range(10)) == [x * x for x in range(10)]
        assert asyncio.run(pool.amap(workfns.asquare, [3])) == [9]  # another loop
    assert len(init.threads) == 2  # once per call, on that call's loop


def test_a_sequential_pool_initializes_each_calling_thread_once() -> None:
    init = InitCounter()
    with shoal.Pool(backend="sequential", initializer=init) as pool:
        for _ in range(3):
            pool.map(workfns.square, [1, 2])
        other = threading.Thread(target=pool.map, args=(workfns.square, [1]))
        other.start()
        other.join()
    assert len(init.threads) == 2


def test_an_auto_pool_keeps_the_threads_it_chose(no_new_threads: None) -> None:
    with shoal.Pool(workers=2) as pool:
        first = pool.run(workfns.sleep_then_return, [0.02] * 6)
        assert first.backend == "threads"
        second = pool.run(workfns.sleep_then_return, [0.02] * 6)
        assert second.backend == "threads"
        assert workers_of(first) & workers_of(second)  # the probe's thread served both


def test_kinds_without_warm_workers_say_so() -> None:
    assert warm_class("threads") is not None and warm_class("sequential") is not None
    assert warm_class("asyncio") is None
