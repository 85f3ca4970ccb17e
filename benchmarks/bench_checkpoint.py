"""Checkpoint overhead (issues 5 and 12): items of ~1 ms, with and without ``checkpoint=``.

    python benchmarks/bench_checkpoint.py [--items 2000] [--repeat 5] [--backend sequential]

Runs, in one process and interleaved (one run of each per round, so a noisy
neighbour slows all of them alike): shoal without a checkpoint; shoal with a
checkpoint of JSON values; shoal with a checkpoint of values JSON cannot hold
(tuples: pickled, and each row tagged with HMAC-SHA256); and a hand-written
peer that commits one SQLite row per item (the naive way to make a loop
resumable). Prints the median of each and the throughput it keeps relative to
no checkpoint (target: the checkpoint costs at most 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _timing import timed

import shoal


def _busy_ms() -> None:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass


def one_ms(x: int) -> int:
    _busy_ms()
    return x * 2


def one_ms_pair(x: int) -> tuple[int, int]:
    _busy_ms()
    return (x, x * 2)  # a tuple: JSON would return a list, so the checkpoint pickles it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default="sequential")
    args = ap.parse_args()
    # Pickled rows are signed with the user's key file unless this is set; a
    # benchmark should not create one in the home directory.
    os.environ.setdefault("SHOAL_CHECKPOINT_KEY", secrets.token_hex(32))
    items = list(range(args.items))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    counter = iter(range(10**9))

    def fresh_db() -> Path:
        return tmp / f"run-{next(counter)}.db"

    def naive() -> None:
        con = sqlite3.connect(fresh_db())
        con.execute("CREATE TABLE r (i INTEGER PRIMARY KEY, v TEXT)")
        for i, x in enumerate(items):
            con.execute("INSERT OR REPLACE INTO r VALUES (?, ?)", (i, json.dumps(one_ms(x))))
            con.commit()
        con.close()

    runs: dict[str, Callable[[], Any]] = {
        "shoal, no checkpoint": lambda: shoal.run(one_ms, items, backend=args.backend),
        "shoal, checkpoint (JSON values)": lambda: shoal.run(
            one_ms, items, backend=args.backend, checkpoint=fresh_db()),
        "shoal, no checkpoint, tuples": lambda: shoal.run(
            one_ms_pair, items, backend=args.backend),
        "shoal, checkpoint (signed pickles)": lambda: shoal.run(
            one_ms_pair, items, backend=args.backend, checkpoint=fresh_db()),
        "loop + sqlite commit per item": naive,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            times[name].append(timed(run))
    median = {name: statistics.median(t) for name, t in times.items()}

    n = args.items
    base = median["shoal, no checkpoint"]
    print(f"{n} items of ~1 ms, backend={args.backend}, median of {args.repeat} "
          "interleaved rounds")
    for name, t in median.items():
        print(f"  {name:<36} {t:7.3f} s  {n / t:9.0f} items/s  "
              f"{base / t:6.1%} of no-checkpoint throughput")
    json_cost = median["shoal, checkpoint (JSON values)"] / base - 1
    pickle_cost = (median["shoal, checkpoint (signed pickles)"]
                   / median["shoal, no checkpoint, tuples"] - 1)
    print(f"checkpoint overhead: JSON values {json_cost:+.1%}, signed pickles "
          f"{pickle_cost:+.1%} (target <= +10%)")


if __name__ == "__main__":
    main()
