"""The HTML run report of a big run: render time and file size (issue 16).

    python benchmarks/bench_report.py [--items 1000000] [--workers 16] [--repeat 3]

Builds a BatchReport of ``--items`` results as a threads run records them
(items back to back on each worker, 1% failed in two types, 5% retried, 2%
restored from a checkpoint; building it is not timed), then times
``report.to_html(path)`` -- one pass over the results, the charts and the page
-- in this process, matplotlib's first import included. Prints the median
seconds and the file's size against the targets: under 5 s and under 5 MB.
Needs ``pip install "shoal[report]"``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal import BatchReport, ItemResult

TARGET_SECONDS, TARGET_MB = 5.0, 5.0


def big_report(n: int, workers: int) -> BatchReport[Any]:
    rng = random.Random(1)
    t0 = 1_790_000_000.0
    clock = [t0] * workers
    errors = [ValueError("bad record"), KeyError("price")]
    results: list[ItemResult[Any]] = []
    append = results.append
    for i in range(n):
        w = i % workers
        duration = rng.expovariate(200.0)
        started = clock[w] + rng.expovariate(5000.0)
        clock[w] = started + duration
        roll = rng.random()
        if roll < 0.02:
            append(ItemResult(i, i, True, i, None, 1, duration, "old", True, 0.0))
        elif roll < 0.03:
            append(ItemResult(i, i, False, None, errors[i % 2], 3, duration,
                              f"ThreadPoolExecutor-0_{w}", False, started))
        else:
            append(ItemResult(i, i, True, i, None, 2 if roll > 0.95 else 1, duration,
                              f"ThreadPoolExecutor-0_{w}", False, started))
    return BatchReport(results, "threads", "threads (given)", workers, max(clock) - t0,
                       started_at=t0, settings={"backend": "threads", "workers": workers})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t = time.perf_counter()
    report = big_report(args.items, args.workers)
    print(f"built a report of {args.items:,} items on {args.workers} workers "
          f"in {time.perf_counter() - t:.1f} s (not timed)")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "report.html")
        for i in range(args.repeat):
            t = time.perf_counter()
            report.to_html(path)
            times.append(time.perf_counter() - t)
            note = " (first: imports matplotlib)" if i == 0 else ""
            print(f"  run {i + 1}: {times[-1]:.2f} s{note}", flush=True)
        size = path.stat().st_size / 1e6
    first, median = times[0], statistics.median(times)
    ok = first < TARGET_SECONDS and size < TARGET_MB
    print(f"to_html, {args.items:,} items: first {first:.2f} s, median {median:.2f} s "
          f"(target < {TARGET_SECONDS:.0f} s); file {size:.3f} MB (target < {TARGET_MB:.0f} MB)"
          f" -> {'met' if ok else 'NOT MET'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
