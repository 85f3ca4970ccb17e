"""Engine benchmarks (issue 2): shoal against named peers, in one process run.

    python benchmarks/bench_engine.py            # full sizes (a few minutes)
    python benchmarks/bench_engine.py --quick    # smaller sizes, same shape

Every figure is the median of ``--repeat`` runs (default 3); peers run in the
same process, interleaved with shoal, so machine load hits both alike.

1. threads: 2,000 items sleeping 50 ms, 100 workers: % of the ideal time
   (ideal = ceil(n / workers) x latency) for shoal, ThreadPoolExecutor.map and
   joblib's threading backend.
2. asyncio: 100,000 coroutines sleeping 100 ms at concurrency 10,000: % of
   ideal for shoal, a hand-written worker pool (the practical ceiling),
   asyncio.gather with a Semaphore and aiometer.
3. memory: 5,000,000 generator items through ``shoal.imap`` on threads, peak
   RSS measured in a fresh child process; ThreadPoolExecutor.map on a smaller
   count for comparison (it materialises every future).
4. overhead: items/s of the sequential backend with results recorded
   (``shoal.run``) and of ``shoal.map``, against a plain loop.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from _timing import median_time

import shoal


def row(name: str, seconds: float, ideal: float | None = None, base: float | None = None) -> None:
    extra = ""
    if ideal is not None:
        extra += f"  {ideal / seconds:6.1%} of ideal"
    if base is not None:
        extra += f"  {seconds / base:6.2f}x plain loop"
    print(f"  {name:<34} {seconds:8.3f} s{extra}")


# --------------------------------------------------------------------- 1. threads
def bench_threads(n: int, workers: int, latency: float, repeat: int) -> None:
    print(f"\n1. threads: {n} items sleeping {latency * 1000:.0f} ms, {workers} workers")
    ideal = math.ceil(n / workers) * latency

    def sleeper(x: int) -> int:
        time.sleep(latency)
        return x

    items = list(range(n))
    row("shoal.map backend=threads", median_time(
        lambda: shoal.map(sleeper, items, backend="threads", workers=workers), repeat), ideal)

    def tpe() -> None:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(sleeper, items))

    row("ThreadPoolExecutor.map", median_time(tpe, repeat), ideal)
    try:
        import joblib
    except ImportError:
        print("  joblib: not installed (pip install joblib)")
    else:
        def jl() -> None:
            joblib.Parallel(n_jobs=workers, backend="threading")(
                joblib.delayed(sleeper)(x) for x in items)
        row("joblib threading", median_time(jl, repeat), ideal)


# --------------------------------------------------------------------- 2. asyncio
def bench_asyncio(n: int, concurrency: int, latency: float, repeat: int) -> None:
    print(f"\n2. asyncio: {n} coroutines sleeping {latency * 1000:.0f} ms, "
          f"concurrency {concurrency}")
    ideal = math.ceil(n / concurrency) * latency

    async def work(x: int) -> int:
        await asyncio.sleep(latency)
        return x

    row("shoal.map backend=asyncio", median_time(
        lambda: shoal.map(work, range(n), backend="asyncio", workers=concurrency), repeat), ideal)

    async def pool() -> None:
        it = iter(range(n))

        async def worker() -> None:
            for x in it:
                await work(x)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    row("hand-written worker pool", median_time(lambda: asyncio.run(pool()), repeat), ideal)

    async def gather_sem() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(x: int) -> int:
            async with sem:
                return await work(x)

        await asyncio.gather(*(one(x) for x in range(n)))

    row("asyncio.gather + Semaphore", median_time(lambda: asyncio.run(gather_sem()), 1), ideal)
    try:
        import aiometer
    except ImportError:
        print("  aiometer: not installed (pip install aiometer)")
    else:
        async def aio() -> None:
            await aiometer.run_on_each(work, range(n), max_at_once=concurrency)
        row("aiometer.run_on_each", median_time(lambda: asyncio.run(aio()), 1), ideal)


# ---------------------------------------------------------------------- 3. memory
_RSS_CHILD = """
import resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import shoal
n, which = int(sys.argv[1]), sys.argv[2]
def sq(x):
    return x * x
t0 = time.perf_counter()
count = 0
if which == "shoal":
    for r in shoal.imap(sq, (i for i in range(n)), backend="threads"):
        count += 1
else:
    with ThreadPoolExecutor(4) as ex:
        for v in ex.map(sq, (i for i in range(n))):
            count += 1
assert count == n
seconds = time.perf_counter() - t0
# Peak RSS of this process's own memory. Not ru_maxrss: Linux keeps it across
# fork and exec, so it would report the parent's size if that was larger.
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:  # not Linux: ru_maxrss is in kB, on macOS in bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak // 1024 if sys.platform == "darwin" else peak
print(seconds, peak / 1024)
"""


def bench_memory(n_shoal: int, n_peer: int) -> None:
    print("\n3. memory: generator items through imap on threads (peak RSS of a fresh process)")
    for which, n in (("shoal", n_shoal), ("ThreadPoolExecutor.map", n_peer)):
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n), which.split(".")[0]],
                             capture_output=True, text=True, check=True).stdout.split()
        seconds, rss = float(out[0]), float(out[1])
        print(f"  {which:<34} {n:>10,} items {seconds:8.2f} s  peak RSS {rss:7.1f} MB")


# -------------------------------------------------------------------- 4. overhead
def bench_overhead(n: int, repeat: int) -> None:
    print(f"\n4. per-item overhead, sequential backend, {n:,} tiny items")

    def sq(x: int) -> int:
        return x * x

    items = list(range(n))

    def loop() -> None:
        out = []
        for x in items:
            out.append(sq(x))

    base = median_time(loop, repeat)
    row("plain for loop", base, base=base)
    row("[f(x) for x in items]", median_time(lambda: [sq(x) for x in items], repeat), base=base)
    t_map = median_time(lambda: shoal.map(sq, items, backend="sequential"), repeat)
    row("shoal.map sequential", t_map, base=base)
    def run_and_read() -> None:
        report = shoal.run(sq, items, backend="sequential")
        assert len(report.values) == n and report.failed == 0
        report.summary()

    t_run = median_time(run_and_read, repeat)
    row("shoal.run sequential, then .values and .summary()", t_run, base=base)
    t_results = median_time(lambda: shoal.run(sq, items, backend="sequential").results, repeat)
    row("shoal.run sequential, then .results (an ItemResult each)", t_results, base=base)
    print(f"  items/s: plain loop {n / base:,.0f}, shoal.map {n / t_map:,.0f}, "
          f"shoal.run {n / t_run:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["threads", "asyncio", "memory", "overhead"])
    args = ap.parse_args()
    q = args.quick
    import os
    import platform
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    if args.only in (None, "threads"):
        bench_threads(400 if q else 2000, 100, 0.05, args.repeat)
    if args.only in (None, "asyncio"):
        bench_asyncio(20_000 if q else 100_000, 2_000 if q else 10_000, 0.1, args.repeat)
    if args.only in (None, "memory"):
        bench_memory(500_000 if q else 5_000_000, 200_000 if q else 2_000_000)
    if args.only in (None, "overhead"):
        bench_overhead(200_000 if q else 1_000_000, args.repeat)


if __name__ == "__main__":
    main()
