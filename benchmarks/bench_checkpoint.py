"""Checkpoint overhead (issue 5): items of ~1 ms, with and without ``checkpoint=``.

    python benchmarks/bench_checkpoint.py [--items 2000] [--repeat 3]

Runs, in one process and interleaved: shoal without a checkpoint, shoal with a
checkpoint (SQLite, WAL, batched commits), and a hand-written peer that commits
one SQLite row per item (the naive way to make a loop resumable). Prints
items/s and the throughput each keeps relative to no checkpoint (target: the
checkpoint costs at most 10%). Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from _timing import median_time

import shoal


def one_ms(x: int) -> int:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x * 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="sequential")
    args = ap.parse_args()
    items = list(range(args.items))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    counter = iter(range(10**9))

    def fresh_db() -> Path:
        return tmp / f"run-{next(counter)}.db"

    def plain() -> None:
        shoal.run(one_ms, items, backend=args.backend)

    def checkpointed() -> None:
        shoal.run(one_ms, items, backend=args.backend, checkpoint=fresh_db())

    def naive() -> None:
        con = sqlite3.connect(fresh_db())
        con.execute("CREATE TABLE r (i INTEGER PRIMARY KEY, v TEXT)")
        for i, x in enumerate(items):
            con.execute("INSERT OR REPLACE INTO r VALUES (?, ?)", (i, json.dumps(one_ms(x))))
            con.commit()
        con.close()

    t_plain = median_time(plain, args.repeat)
    t_ckpt = median_time(checkpointed, args.repeat)
    t_naive = median_time(naive, args.repeat)
    n = args.items
    print(f"{n} items of ~1 ms, backend={args.backend}, median of {args.repeat}")
    for name, t in (("shoal, no checkpoint", t_plain), ("shoal, checkpoint=run.db", t_ckpt),
                    ("loop + sqlite commit per item", t_naive)):
        print(f"  {name:<32} {t:7.3f} s  {n / t:9.0f} items/s  "
              f"{t_plain / t:6.1%} of no-checkpoint throughput")
    print(f"checkpoint overhead: {(t_ckpt / t_plain - 1):+.1%} (target <= +10%)")


if __name__ == "__main__":
    main()
