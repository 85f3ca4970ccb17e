"""Warm pools and the Executor (issue 14): shoal against named peers, in one process run.

    python benchmarks/bench_pool.py            # full sizes
    python benchmarks/bench_pool.py --quick    # smaller sizes, same shape

Every figure is the median of ``--repeat`` rounds (default 3); in each round
shoal and its peer run one after the other, so machine load hits both alike.

1. submit: N calls of a tiny function through ``submit()``, then waiting on
   every future; per-call cost of ``shoal.Executor`` against
   ``ThreadPoolExecutor`` (threads) and ``ProcessPoolExecutor`` (processes),
   same number of workers, each started before the clock runs.
2. warm pool: ``pool.map(f, range(100))``: a fresh ``shoal.Pool``'s first
   call (which starts the workers) and its later calls, against cold
   ``shoal.map`` calls; for a tiny f and one sleeping 1 ms; on processes also
   joblib's warm call when joblib is installed. Processes keep their
   workers only once warm processes are registered
   (``shoal._backends.warm_class("processes")``); until then the script says
   so and the pool's calls are cold.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import shoal
from shoal._backends import warm_class


def tiny(x: int) -> int:
    return x + 1


def per_call_us(ex: cf.Executor, n: int) -> float:
    """Microseconds per call: n submits, then wait for all."""
    list(ex.map(tiny, range(50)))  # workers up before the clock runs
    start = time.perf_counter()
    fs = [ex.submit(tiny, i) for i in range(n)]
    cf.wait(fs)
    seconds = time.perf_counter() - start
    assert fs[-1].result() == n
    return seconds / n * 1e6


def bench_submit(kind: str, n: int, workers: int, repeat: int) -> None:
    peer_cls: Callable[..., cf.Executor] = (cf.ThreadPoolExecutor if kind == "threads"
                                           else cf.ProcessPoolExecutor)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeat):
        with shoal.Executor(workers, backend=kind) as ex:  # type: ignore[arg-type]
            ours.append(per_call_us(ex, n))
        with peer_cls(workers) as peer:
            theirs.append(per_call_us(peer, n))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"  {kind:<9} shoal.Executor {a:7.2f} us/call   {peer_cls.__name__} {b:7.2f} us/call"
          f"   ratio {a / b:5.2f}x   (rounds: shoal {fmt(ours)}; peer {fmt(theirs)})")


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sleepy(x: int) -> int:
    time.sleep(0.001)
    return x


def bench_warm(kind: str, fn: Callable[[int], int], label: str, workers: int,
               pools: int, calls: int) -> float:
    """Fresh pools' first calls, their later calls, and cold shoal.map calls
    (medians); returns the later calls' median."""
    warm = warm_class(kind) is not None
    shoal.map(fn, range(10), backend=kind, workers=workers)  # type: ignore[call-overload]
    firsts: list[float] = []
    laters: list[float] = []
    for _ in range(pools):
        with shoal.Pool(backend=kind, workers=workers) as pool:  # type: ignore[arg-type]
            firsts.append(timed(lambda: pool.map(fn, range(100))))
            laters += [timed(lambda: pool.map(fn, range(100))) for _ in range(calls)]
    first, later = statistics.median(firsts), statistics.median(laters)
    cold = statistics.median(
        timed(lambda: shoal.map(fn, range(100), backend=kind,  # type: ignore[call-overload]
                                workers=workers))
        for _ in range(pools * calls))
    note = "" if warm else "  (no warm workers for this kind in this checkout: all cold)"
    print(f"  {kind:<9} {label:<10} 1st {first * 1e3:7.2f} ms   later {later * 1e3:7.2f} ms"
          f"   1st/later {first / later:5.2f}x   cold shoal.map {cold * 1e3:7.2f} ms "
          f"({cold / later:5.2f}x later){note}")
    if kind != "processes":
        return later
    try:
        import joblib
    except ImportError:
        print("  joblib: not installed (pip install joblib), no warm peer")
        return later
    with joblib.Parallel(n_jobs=workers) as parallel:
        parallel(joblib.delayed(fn)(x) for x in range(100))  # starts loky's workers
        jl = statistics.median(timed(lambda: parallel(joblib.delayed(fn)(x)
                                                      for x in range(100)))
                               for _ in range(pools * calls))
    print(f"  {'':<9} {label:<10} joblib warm call {jl * 1e3:7.2f} ms   shoal later / joblib "
          f"{later / jl:5.2f}x")
    return later


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, same shape")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per figure (default 3)")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 20_000
    print(f"1. submit: {n:,} calls of a tiny function, then waiting on all "
          f"(median of {args.repeat})")
    bench_submit("threads", n, 4, args.repeat)
    bench_submit("processes", n, 2, args.repeat)
    pools, calls = (3, 3) if args.quick else (5, 10)
    print(f"\n2. warm pool: pool.map(f, range(100)): medians of {pools} fresh pools' first "
          f"calls, of their {pools * calls} later calls, and of as many cold shoal.map calls")
    for fn, label in ((tiny, "tiny"), (sleepy, "1 ms sleep")):
        bench_warm("threads", fn, label, 4, pools, calls)
    bench_warm("processes", tiny, "tiny", 2, pools, calls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
