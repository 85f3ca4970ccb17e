"""backend="processes" against its peers, measured in the same run.

Scenarios (the targets of the issue that introduced the backend):

1. tiny: 1,000,000 items of ``x * x`` on 2 workers, as a ratio to a plain list
   comprehension (lower is better; target: processes <= 2.0x, auto <= 1.2x).
   The input is ``range(n)``; the line ``shoal "processes", list input`` passes
   ``list(range(n))`` instead, against a comprehension over that list;
2. cpu: 400 CPU-bound items of ~5 ms on 2 workers, as a speed-up over running
   them in a loop (higher is better; target >= 1.9x);
3. crash: 200 items, one calls ``os._exit``: what survives (target: 199 ok and
   1 ``WorkerCrashed``), next to what ``concurrent.futures`` delivers;
4. hang: 200 items of 10 ms, one never returns, ``timeout=1`` (target: under 3 s
   with 199 results);
5. Ctrl-C: SIGINT to a driver script whose workers are busy (target: it exits
   within 2 s and leaves no process behind);
6. warm: a second ``map(x * x, range(100))`` on warm workers
   (``shoal.Pool(backend="processes")``'s ``pool.map``), next to joblib's
   warm call (loky reuses its workers) and to a cold
   ``shoal.map`` that starts and stops its pool (target: within 2x of joblib,
   at least 10x faster than cold). Each contender runs in a fresh interpreter
   per round: one untimed call, then the median of 30 calls.

Timings (scenarios 1 and 2) are taken in rounds. In each round every
contender runs in a fresh interpreter that times the baseline and then the
contender once (after one untimed call); a figure is the median over the
rounds of the contender's time against its own baseline. A fresh interpreter
each time keeps what one peer leaves behind (joblib's worker processes and
threads; numpy, which importing joblib or mpire loads, starts BLAS threads)
from changing how the next contender runs: with threads in the driver shoal
cannot fork its fork server and starts it with exec, which the line
``shoal "processes", numpy loaded`` shows on purpose. Rounds spread a slow
spell of a shared machine over every contender. Pool start-up is part of every
timing (3 rounds; 1 with ``--quick``, which also uses smaller inputs).
Scenario 2 also prints how busy the workers were (the items' own seconds over
workers x wall time), which a slow spell does not move: what is lost to
start-up, feeding and the tail, apart from the machine's speed. The load
average before and after each scenario says how busy the machine was.

    .venv/bin/python benchmarks/bench_processes.py [--quick] [--rounds N] [--only tiny,cpu]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from _timing import timed

import shoal

WORKERS = 2


def square(x: int) -> int:
    return x * x


def burn(loops: int) -> int:
    """Pure-Python CPU work: ``loops`` iterations."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def burn_timed(loops: int) -> float:
    """``burn``, returning the seconds it took where it ran."""
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


def loops_per_ms() -> int:
    """How many ``burn`` iterations take one millisecond here (best of 5)."""
    best = min(timed(lambda: burn(100_000)) for _ in range(5))
    return int(100_000 / (best * 1000))


def exit_on_100(x: int) -> int:
    if x == 100:
        os._exit(1)
    return x


def hang_on_100(x: int) -> int:
    time.sleep(3600 if x == 100 else 0.01)
    return x


# ----------------------------------------------------------------- peers
def pool_map(fn: Callable[[Any], Any], data: Any) -> list[Any]:
    with multiprocessing.Pool(WORKERS) as pool:
        return pool.map(fn, data)


def futures_map(fn: Callable[[Any], Any], data: Any) -> list[Any]:
    chunk = max(1, len(data) // (4 * WORKERS))  # Pool.map's default chunking
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        return list(ex.map(fn, data, chunksize=chunk))


def joblib_map(fn: Callable[[Any], Any], data: Any) -> list[Any]:
    import joblib

    return joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(fn)(x) for x in data)  # type: ignore[no-any-return]


def mpire_map(fn: Callable[[Any], Any], data: Any) -> list[Any]:
    from mpire import WorkerPool  # type: ignore[attr-defined]

    with WorkerPool(n_jobs=WORKERS) as pool:
        return pool.map(fn, data)  # type: ignore[no-any-return]


PEERS: dict[str, Callable[[Callable[[Any], Any], Any], list[Any]]] = {
    "multiprocessing.Pool.map": pool_map,
    "ProcessPoolExecutor.map": futures_map,
    "joblib": joblib_map,
    "mpire": mpire_map,
}


def _available(name: str) -> bool:
    """Whether peer ``name`` is installed (found, not imported: see ``in_rounds``)."""
    module = {"joblib": "joblib", "mpire": "mpire"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


# ------------------------------------------------------------- scenarios
def contender(name: str, fn: Callable[[Any], Any], data: Any) -> Callable[[], list[Any]]:
    """A call that runs ``fn`` over ``data`` the way contender ``name`` does."""
    if name == 'shoal backend="processes"':
        return lambda: shoal.map(fn, data, backend="processes", workers=WORKERS)
    if name == 'shoal backend="auto"':
        return lambda: shoal.map(fn, data, workers=WORKERS)
    if name == NUMPY_RUN:
        import numpy  # noqa: F401 - its BLAS threads are the point

        return lambda: shoal.map(fn, data, backend="processes", workers=WORKERS)
    if name == LIST_RUN:  # ``data`` is already the list (see ``child``)
        return lambda: shoal.map(fn, data, backend="processes", workers=WORKERS)
    return lambda: PEERS[name](fn, data)


NUMPY_RUN = 'shoal "processes", numpy loaded'
#: the tiny input as a list: every item is pulled and pickled, where a range
#: is sliced and a chunk of it pickles in a few bytes
LIST_RUN = 'shoal "processes", list input'


def contenders(skip_slow_peers: bool, tiny: bool = False) -> list[str]:
    names = ['shoal backend="processes"', 'shoal backend="auto"']
    if tiny:
        names.append(LIST_RUN)
    if importlib.util.find_spec("numpy") is not None:
        names.append(NUMPY_RUN)
    for name in PEERS:
        if _available(name) and not (skip_slow_peers and name in ("joblib", "mpire")):
            names.append(name)
    return names


def child(scenario: str, name: str, n: int, per_ms: int) -> None:
    """In a fresh interpreter: time the baseline and ``name`` once each.

    Prints both times and, for the cpu scenario, how busy the workers were:
    the seconds the items took where they ran over workers x wall time.
    """
    if scenario == "tiny":
        fn: Callable[[Any], Any] = square
        data: Any = list(range(n)) if name == LIST_RUN else range(n)
    else:
        fn, data = burn_timed, [5 * per_ms] * n
    run = contender(name, fn, data)
    if scenario == "tiny":  # a first call, checked: imports and the like are not timed
        assert run() == [fn(x) for x in data], name
    else:
        assert len(contender(name, fn, data[:64])()) == 64, name
    # What each timed call returns is dropped inside the timing, as it would be
    # by a caller done with it; the workers' seconds are summed first (cpu).
    base = timed(lambda: [fn(x) for x in data])
    seconds: list[float] = []

    def call() -> None:
        values = run()
        seconds.append(sum(values) if scenario == "cpu" else 0.0)

    took = timed(call)
    print(base, took, seconds[0] / (WORKERS * took))


def in_rounds(scenario: str, names: list[str], n: int, per_ms: int,
              repeats: int) -> dict[str, list[tuple[float, ...]]]:
    """(baseline s, contender s, busy): ``repeats`` rounds of every contender in turn.

    Each measurement runs in a fresh interpreter, the baseline next to the
    contender: what one peer leaves in its process (joblib keeps worker
    processes and threads; importing joblib or mpire loads numpy, whose BLAS
    starts threads, and shoal then starts its fork server with exec) cannot
    change how another contender runs. Taking the rounds in turn spreads a
    slow spell of a shared machine over every contender.
    """
    times: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--child", scenario, name, str(n), str(per_ms)],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            times[name].append(tuple(float(x) for x in out[-3:]))
    return times


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def bench_tiny(n: int, repeats: int, skip_slow_peers: bool) -> None:
    before = load()
    times = in_rounds("tiny", contenders(skip_slow_peers, tiny=True), n, 0, repeats)
    base = statistics.median(r[0] for rounds in times.values() for r in rounds)
    print(f"\n1. tiny: {n:,} items of x * x, {WORKERS} workers (list comprehension: "
          f"{base * 1000:.0f} ms; ratio, lower is better; {before}, after: {load()})")
    for name, rounds in times.items():
        ratio = statistics.median(r[1] / r[0] for r in rounds)
        print(f"   {name:<32} {statistics.median(r[1] for r in rounds) * 1000:8.0f} ms  "
              f"{ratio:6.2f}x")


def bench_cpu(n: int, repeats: int, per_ms: int) -> None:
    before = load()
    times = in_rounds("cpu", contenders(False), n, per_ms, repeats)
    base = statistics.median(r[0] for rounds in times.values() for r in rounds)
    print(f"\n2. cpu: {n} items of ~5 ms CPU, {WORKERS} workers (loop: {base:.2f} s; "
          f"speed-up, higher is better; busy: item time where it ran / (workers x wall); "
          f"{before}, after: {load()})")
    for name, rounds in times.items():
        speedup = statistics.median(r[0] / r[1] for r in rounds)
        busy = statistics.median(r[2] for r in rounds)
        print(f"   {name:<32} {statistics.median(r[1] for r in rounds):8.2f} s   "
              f"{speedup:6.2f}x   busy {busy:6.1%}")


def bench_crash(n: int) -> None:
    print(f"\n3. crash: {n} items, item 100 calls os._exit(1)")
    start = time.perf_counter()
    report = shoal.run(exit_on_100, range(n), backend="processes", workers=WORKERS)
    took = time.perf_counter() - start
    errors = {type(r.error).__name__ for r in report.failures}
    print(f"   shoal: {report.succeeded} ok, {report.failed} failed ({', '.join(errors)}) "
          f"in {took:.2f} s")
    if report.failures:
        print(f"          {report.failures[0].error}")
    ok = lost = 0
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        futures = [ex.submit(exit_on_100, x) for x in range(n)]
        for f in futures:
            try:
                f.result()
                ok += 1
            except concurrent.futures.process.BrokenProcessPool:
                lost += 1
    print(f"   concurrent.futures: {ok} ok, {lost} lost to BrokenProcessPool")


def bench_hang(n: int) -> None:
    print(f"\n4. hang: {n} items of 10 ms, item 100 never returns, timeout=1")
    start = time.perf_counter()
    report = shoal.run(hang_on_100, range(n), backend="processes", workers=WORKERS, timeout=1)
    took = time.perf_counter() - start
    errors = {type(r.error).__name__ for r in report.failures}
    print(f"   shoal: {report.succeeded} results, {report.failed} failed ({', '.join(errors)}) "
          f"in {took:.2f} s (target < 3 s)")


CTRL_C_DRIVER = """
    import os, time
    import shoal

    def slow(x):
        os.write(1, b"started\\n")
        time.sleep(600)

    if __name__ == "__main__":
        try:
            shoal.map(slow, range(8), backend="processes", workers=2, chunk_size=1)
        except KeyboardInterrupt:
            pass
"""


def bench_ctrl_c() -> None:
    print("\n5. Ctrl-C: SIGINT to a driver whose 2 workers are busy")
    code = textwrap.dedent(CTRL_C_DRIVER)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    except ImportError:
        family = []
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    took = time.perf_counter() - start
    left = [p for p in family if p.is_running() and p.status() != "zombie"]
    print(f"   shoal: the driver exited {took:.2f} s after SIGINT (target < 2 s); "
          f"{len(family)} child processes before, {len(left)} left")


WARM_CALLS = 30
WARM_CONTENDERS = ("shoal.Pool warm call", "joblib warm call", "shoal.map cold")


def warm_contender(name: str) -> Callable[[], list[Any]]:
    """A call of ``map(square, range(100))`` the way contender ``name`` makes it."""
    data = range(100)
    if name == "shoal.Pool warm call":
        pool = shoal.Pool(backend="processes", workers=WORKERS)  # closed at exit
        return lambda: pool.map(square, data)
    if name == "joblib warm call":
        return lambda: joblib_map(square, data)
    return lambda: shoal.map(square, data, backend="processes", workers=WORKERS)


def warm_child(name: str) -> None:
    """In a fresh interpreter: one untimed call, then the median of WARM_CALLS."""
    call = warm_contender(name)
    assert call() == [x * x for x in range(100)], name
    print(statistics.median(timed(call) for _ in range(WARM_CALLS)))


def bench_warm(repeats: int) -> None:
    before = load()
    names = [n for n in WARM_CONTENDERS if n != "joblib warm call" or _available("joblib")]
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--warm-child", name],
                                 capture_output=True, text=True, check=True).stdout.split()
            times[name].append(float(out[-1]))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n6. warm: a second map(x * x, range(100)), {WORKERS} workers, median of "
          f"{WARM_CALLS} calls x {repeats} rounds ({before}, after: {load()})")
    warm = median["shoal.Pool warm call"]
    for name, t in median.items():
        print(f"   {name:<32} {t * 1000:8.2f} ms  {t / warm:6.2f}x the warm pool's time")
    if "joblib warm call" in median:
        print(f"   warm pool / joblib: {warm / median['joblib warm call']:.2f}x (target <= 2)")
    print(f"   cold / warm pool: {median['shoal.map cold'] / warm:.1f}x (target >= 10)")


SCENARIOS = ("tiny", "cpu", "crash", "hang", "ctrl-c", "warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one round")
    parser.add_argument("--rounds", type=int, help="rounds of timings (default 3, quick 1)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run, of {', '.join(SCENARIOS)}")
    parser.add_argument("--no-slow-peers", action="store_true",
                        help="leave joblib and mpire out of the tiny scenario")
    parser.add_argument("--child", nargs=4, metavar=("SCENARIO", "NAME", "N", "PER_MS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--warm-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child:
        warm_child(args.warm_child)
        return
    if args.child:
        scenario, name, n, per_ms = args.child
        child(scenario, name, int(n), int(per_ms))
        return
    only = set(args.only.split(","))
    if only - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(only - set(SCENARIOS)))}")
    repeats = args.rounds or (1 if args.quick else 3)
    per_ms = loops_per_ms()
    print(f"shoal {shoal.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, {per_ms} loop iterations per ms, {repeats} rounds")
    if "tiny" in only:
        bench_tiny(100_000 if args.quick else 1_000_000, repeats, args.no_slow_peers)
    if "cpu" in only:
        bench_cpu(100 if args.quick else 400, repeats, per_ms)
    if "crash" in only:
        bench_crash(200)
    if "hang" in only:
        bench_hang(200)
    if "ctrl-c" in only:
        bench_ctrl_c()
    if "warm" in only:
        bench_warm(repeats)


if __name__ == "__main__":
    main()
