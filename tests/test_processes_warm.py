"""backend="processes" warm workers: ``ProcessWorkers``, the pool a ``shoal.Pool`` keeps.

Runs here go through the run's warm lookup (``Run(..., warm=...)``), as a
``shoal.Pool``'s do. Scripts run in a subprocess where the driver's own
state matters (``__main__``, its threads, its death, its exit). Waits are
on pipes, on process exit, or bounded polls; never a bare sleep.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal._backends import warm_class
from shoal._backends._processes.pool import ProcessWorkers
from shoal._core.consumer import segments
from shoal._core.options import Options
from shoal._core.results import BatchReport
from shoal._core.run import Run

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: Iterable[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Bounded poll until every process has ended; returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _children() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    before = _children()
    yield
    gc.collect()  # a pool a test dropped is closed by its finalizer
    new = [p for p in _children() if p not in before]
    assert _wait_gone(new, 5.0) == [], "a test left child processes behind"


@pytest.fixture
def pool() -> Iterator[ProcessWorkers]:
    workers = ProcessWorkers(Options(), 2)
    yield workers
    workers.close()


def run_on(pool: ProcessWorkers, fn: Callable[[Any], Any], items: Iterable[Any],
           **options: Any) -> BatchReport[Any]:
    """``shoal.run`` on ``pool``'s workers, as a ``shoal.Pool`` runs it."""
    options = {"backend": "processes", **options}
    run = Run(fn, items, Options.from_kwargs("collect_errors", options), options,
              warm=lambda name: pool if name == "processes" else None)
    for segs in segments(run):
        run.deliver(segs, keep=True)
    report = run.report()
    run.close(report)
    return report


# ------------------------------------------------------ functions run in workers
def square(x: int) -> int:
    return x * x


def pid_of(x: int) -> int:
    return os.getpid()


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 fails")
    return x


def exit_on_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


def hang_on_3(x: int) -> int:
    if x == 3:
        time.sleep(3600)
    return x


def log_pid(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


# ----------------------------------------------------------------- the lookup
def test_warm_class_finds_the_process_workers() -> None:
    assert warm_class("processes") is ProcessWorkers
    assert warm_class("asyncio") is None  # its workers are coroutines of one loop


# ------------------------------------------------------------------ reuse
def test_runs_of_different_functions_share_the_workers(pool: ProcessWorkers) -> None:
    used = set(run_on(pool, pid_of, range(40)).values)
    started = set(pool._state.workers)
    assert used <= started
    assert run_on(pool, square, range(10)).values == [x * x for x in range(10)]
    assert run_on(pool, lambda x: -x, range(3)).values == [0, -1, -2]
    used |= set(run_on(pool, pid_of, range(40)).values)
    # the processes of the first run served the others; at most `workers` ever started
    assert started <= set(pool._state.workers) and len(pool._state.workers) <= 2
    assert used <= set(pool._state.workers)


def test_the_initializer_runs_once_per_worker_not_once_per_run(tmp_path: Path) -> None:
    log = tmp_path / "init.log"
    opts = Options.from_kwargs("collect_errors", {"initializer": log_pid, "initargs": (str(log),)})
    workers = ProcessWorkers(opts, 2)
    try:
        pids: set[int | None] = set()  # a failed item's value is None: never an init's pid
        for _ in range(3):
            pids |= set(run_on(workers, pid_of, range(20)).values)
        inits = [int(x) for x in log.read_text().split()]
        assert sorted(inits) == sorted(set(inits))  # once each
        assert pids <= set(inits)
    finally:
        workers.close()


def test_workers_start_as_work_needs_them() -> None:
    many = ProcessWorkers(Options(), 200)
    try:
        assert run_on(many, square, range(2), workers=200).values == [0, 1]
        server = psutil.Process(many._state.server.pid)  # type: ignore[union-attr]
        state = many._state
        unready = sum(not w.ready for w in state.workers.values())
        assert len(state.workers) + state.starting - unready <= 2  # asked for, ever
        assert len(server.children()) <= 2
    finally:
        many.close()


def test_a_plain_map_starts_no_more_workers_than_items() -> None:
    pids = shoal.map(pid_of, range(3), backend="processes", workers=200, chunk_size=1)
    assert len(set(pids)) <= 3


# -------------------------------------------------------------- replacement
def test_a_crashed_worker_is_replaced(pool: ProcessWorkers) -> None:
    report = run_on(pool, exit_on_5, range(12))
    assert [r.index for r in report.failures] == [5]
    assert isinstance(report.failures[0].error, shoal.WorkerCrashed)
    assert run_on(pool, square, range(30)).values == [x * x for x in range(30)]


@pytest.mark.timeout(30)
def test_a_timed_out_worker_is_replaced(pool: ProcessWorkers) -> None:
    report = run_on(pool, hang_on_3, range(8), timeout=1.0)
    assert [r.index for r in report.failures] == [3]
    assert isinstance(report.failures[0].error, TimeoutError)
    assert run_on(pool, square, range(30), timeout=30).values == [x * x for x in range(30)]


def test_max_items_per_worker_recycles_warm_workers(pool: ProcessWorkers) -> None:
    for _ in range(2):
        pids = run_on(pool, pid_of, range(12), max_items_per_worker=3).values
        counts = {pid: pids.count(pid) for pid in set(pids)}
        assert len(counts) >= 4 and max(counts.values()) <= 3


def test_a_failed_run_leaves_the_pool_ready(pool: ProcessWorkers) -> None:
    with pytest.raises(ValueError, match="item 3 fails"):
        run_on(pool, fail_on_3, range(50), on_error="all_or_nothing")
    # A worker of that run (job 1) may set the stop flag a moment after the
    # run ended, while the next one runs: that must not stop the next one.
    pool._state.flag.stop(1)
    report = run_on(pool, square, range(200), on_error="all_or_nothing")
    assert report.values == [x * x for x in range(200)]


# ---------------------------------------------------------------- one at a time
def test_a_pool_serves_one_run_at_a_time(pool: ProcessWorkers) -> None:
    options = {"backend": "processes"}
    first = Run(square, range(1000), Options.from_kwargs("collect_errors", options), options,
                warm=lambda name: pool)
    steps = segments(first)
    next(steps)  # the first run is under way
    with pytest.raises(shoal.BrokenBackend, match="serving another run"):
        run_on(pool, square, range(3))
    for _ in steps:
        pass
    assert run_on(pool, square, range(3)).values == [0, 1, 4]


def test_a_closed_pool_refuses_runs(pool: ProcessWorkers) -> None:
    run_on(pool, square, range(3))
    pool.close()
    with pytest.raises(shoal.BrokenBackend, match="closed"):
        run_on(pool, square, range(3))


# ------------------------------------------------------------- no orphans
@pytest.mark.parametrize("cancel", [False, True])
def test_close_leaves_no_child(cancel: bool) -> None:
    before = _children()
    workers = ProcessWorkers(Options(), 2)
    run_on(workers, square, range(50))
    family = [p for p in _children() if p not in before]
    assert len(family) >= 2  # the fork server and a worker
    workers.close(cancel)
    assert _wait_gone(family) == []


def test_garbage_collection_leaves_no_child() -> None:
    before = _children()
    workers = ProcessWorkers(Options(), 2)
    run_on(workers, square, range(50))
    family = [p for p in _children() if p not in before]
    assert family
    del workers
    gc.collect()
    assert _wait_gone(family) == []


EXIT_SCRIPT = """
    import os, signal, sys
    from shoal._backends import warm_class
    from shoal._core.consumer import segments
    from shoal._core.options import Options
    from shoal._core.run import Run

    def pid_of(x):
        return os.getpid()

    if __name__ == "__main__":
        pool = warm_class("processes")(Options(), 2)
        opts = {"backend": "processes"}
        run = Run(pid_of, range(20), Options.from_kwargs("collect_errors", opts), opts,
                  warm=lambda name: pool)
        for _ in segments(run):
            pass
        print(pool._state.server.pid, *pool._state.workers, flush=True)
        if sys.argv[1] == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        # "exit": the interpreter exits with the pool open
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["exit", "killed"])
def test_interpreter_exit_or_death_leaves_no_child(tmp_path: Path, how: str) -> None:
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == (0 if how == "exit" else -signal.SIGKILL), out.stderr
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) >= 2
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    assert _wait_gone(procs) == []


TWO_POOLS_SCRIPT = """
    import os, time
    from shoal._backends import warm_class
    from shoal._core.consumer import segments
    from shoal._core.options import Options
    from shoal._core.run import Run

    def square(x):
        return x * x

    def on(pool):
        opts = {"backend": "processes"}
        run = Run(square, range(20), Options.from_kwargs("collect_errors", opts), opts,
                  warm=lambda name: pool)
        for _ in segments(run):
            pass

    if __name__ == "__main__":
        first = warm_class("processes")(Options(), 2)
        on(first)
        second = warm_class("processes")(Options(), 2)  # forked while the first is up
        on(second)
        start = time.monotonic()
        first.close()  # its workers exit when their sockets close: none held by the second
        print(round(time.monotonic() - start, 3))
        second.close()
"""


@pytest.mark.timeout(30)
def test_a_second_pool_does_not_hold_the_first_ones_workers(tmp_path: Path) -> None:
    from shoal._backends._processes.state import GRACEFUL_EXIT_SECONDS

    script = tmp_path / "pools.py"
    script.write_text(textwrap.dedent(TWO_POOLS_SCRIPT))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=25, check=True)
    # Had the second fork server inherited the first pool's sockets, closing
    # the first would wait GRACEFUL_EXIT_SECONDS for workers that never exit.
    assert float(out.stdout) < GRACEFUL_EXIT_SECONDS / 2


# ------------------------------------------------- per-worker state from __main__
MAIN_STATE_SCRIPT = """
    import json, os, sys, threading
    import shoal
    from shoal._backends import warm_class
    from shoal._core.consumer import segments
    from shoal._core.options import Options
    from shoal._core.run import Run

    MODEL = None

    def load_model(scale):
        global MODEL
        MODEL = {"scale": scale, "pid": os.getpid()}

    def predict(x):
        return MODEL["scale"] * x

    def loaded_here(x):
        return MODEL["pid"] == os.getpid()

    def on(pool, fn, items):
        opts = {"backend": "processes"}
        run = Run(fn, items, Options.from_kwargs("collect_errors", opts), opts,
                  warm=lambda name: pool)
        out = []
        for segs in segments(run):
            for seg in segs:
                out.extend(r.value if r.ok else repr(r.error) for r in seg.item_results())
        return out

    if __name__ == "__main__":
        if sys.argv[1] == "threaded":  # a thread in the driver: the fork server is exec'd
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        plain = shoal.map(predict, range(4), backend="processes", workers=2,
                          initializer=load_model, initargs=(10,))
        pool = warm_class("processes")(
            Options.from_kwargs("all_or_nothing", {"initializer": load_model, "initargs": (3,)}),
            2)
        runs = [on(pool, predict, range(4)), on(pool, loaded_here, range(4)),
                on(pool, lambda x: MODEL["scale"] + x, range(2))]
        pool.close()
        print(json.dumps([plain, *runs]))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", ["single-threaded", "threaded"])
def test_a_global_the_initializer_sets_in_main_is_seen_by_fn(tmp_path: Path,
                                                             driver: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(MAIN_STATE_SCRIPT))
    out = subprocess.run([sys.executable, str(script), driver], capture_output=True,
                         text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[0, 10, 20, 30], [0, 3, 6, 9], [True] * 4, [3, 4]]
