"""backend="processes" against its peers, measured in the same run.

Scenarios (the targets of the issue that introduced the backend):

1. tiny: 1,000,000 items of ``x * x`` on 2 workers, as a ratio to a plain list
   comprehension (lower is better; target: processes <= 2.0x, auto <= 1.2x);
2. cpu: 400 CPU-bound items of ~5 ms on 2 workers, as a speed-up over running
   them in a loop (higher is better; target >= 1.9x);
3. crash: 200 items, one calls ``os._exit``: what survives (target: 199 ok and
   1 ``WorkerCrashed``), next to what ``concurrent.futures`` delivers;
4. hang: 200 items of 10 ms, one never returns, ``timeout=1`` (target: under 3 s
   with 199 results);
5. Ctrl-C: SIGINT to a driver script whose workers are busy (target: it exits
   within 2 s and leaves no process behind).

Each timing is the median of 3 runs (1 with ``--quick``, which also uses
smaller inputs). Pool start-up is part of every timing.

    .venv/bin/python benchmarks/bench_processes.py [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from _timing import median_time, timed

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
    module = {"joblib": "joblib", "mpire": "mpire"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------- scenarios
def bench_tiny(n: int, repeats: int, skip_slow_peers: bool) -> None:
    data = range(n)
    expected = [square(x) for x in data]
    base = median_time(lambda: [square(x) for x in data], repeats)
    print(f"\n1. tiny: {n:,} items of x * x, {WORKERS} workers "
          f"(list comprehension: {base * 1000:.0f} ms; ratio, lower is better)")
    runs: dict[str, Callable[[], list[Any]]] = {
        'shoal backend="processes"': lambda: shoal.map(square, data, backend="processes",
                                                       workers=WORKERS),
        'shoal backend="auto"': lambda: shoal.map(square, data, workers=WORKERS),
    }
    for name, peer in PEERS.items():
        if _available(name) and not (skip_slow_peers and name in ("joblib", "mpire")):
            runs[name] = lambda peer=peer: peer(square, data)  # type: ignore[misc]
    for name, run in runs.items():
        assert run() == expected, name
        t = median_time(run, repeats)
        print(f"   {name:<28} {t * 1000:8.0f} ms  {t / base:6.2f}x")


def bench_cpu(n: int, repeats: int, per_ms: int) -> None:
    data = [5 * per_ms] * n
    base = median_time(lambda: [burn(x) for x in data], repeats)
    print(f"\n2. cpu: {n} items of ~5 ms CPU, {WORKERS} workers "
          f"(loop: {base:.2f} s; speed-up, higher is better)")
    runs: dict[str, Callable[[], list[Any]]] = {
        'shoal backend="processes"': lambda: shoal.map(burn, data, backend="processes",
                                                       workers=WORKERS),
        'shoal backend="auto"': lambda: shoal.map(burn, data, workers=WORKERS),
    }
    for name, peer in PEERS.items():
        if _available(name):
            runs[name] = lambda peer=peer: peer(burn, data)  # type: ignore[misc]
    for name, run in runs.items():
        t = median_time(run, repeats)
        print(f"   {name:<28} {t:8.2f} s   {base / t:6.2f}x")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    per_ms = loops_per_ms()
    print(f"shoal {shoal.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, {per_ms} loop iterations per ms")
    bench_tiny(100_000 if args.quick else 1_000_000, repeats, skip_slow_peers=False)
    bench_cpu(100 if args.quick else 400, repeats, per_ms)
    bench_crash(200)
    bench_hang(200)
    bench_ctrl_c()


if __name__ == "__main__":
    main()
