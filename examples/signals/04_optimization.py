"""Demo 04: which strategy is fastest for this workload, measured on this machine.

Every method measures the same captures and must give the same results:

* Serial: ``backend="sequential"``, the baseline;
* Threads / Processes: the same call on a pool (processes only when this
  shoal has the processes backend);
* Checkpointed batch: threads plus a checkpoint, a per-file timeout and a
  retry, the settings of a production run (what they cost is the point);
* Array batches: the captures split into one batch per core, each batch
  measured by one vectorized FFT over its stacked signals (numpy; shoal runs
  the batches on threads).

Run: python examples/signals/04_optimization.py [--files 20]
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _signals import files_argument, make_signal_files, measure, measure_stack

import shoal

Method = Callable[[list[Path], Path], list[dict[str, Any]]]


def serial(paths: list[Path], tmp: Path) -> list[dict[str, Any]]:
    return shoal.map(measure, paths, backend="sequential")


def threads(paths: list[Path], tmp: Path) -> list[dict[str, Any]]:
    return shoal.map(measure, paths, backend="threads", workers=2 * (os.cpu_count() or 1))


def processes(paths: list[Path], tmp: Path) -> list[dict[str, Any]]:
    return shoal.map(measure, paths, backend="processes", workers=os.cpu_count() or 1)


def checkpointed(paths: list[Path], tmp: Path) -> list[dict[str, Any]]:
    return shoal.map(measure, paths, backend="threads", checkpoint=tmp / "run.db",
                     timeout=60, retries=1)


def array_batches(paths: list[Path], tmp: Path) -> list[dict[str, Any]]:
    batches = shoal.split(paths, max_batches=os.cpu_count() or 1)
    return shoal.merge(shoal.map(measure_stack, batches, backend="threads"))


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal files and measurements, to floating-point noise (vectorized sums round apart)."""
    return len(a) == len(b) and all(
        x["file"] == y["file"]
        and all(math.isclose(x[k], y[k], rel_tol=1e-6, abs_tol=1e-9) for k in x if k != "file")
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    args = files_argument(__doc__.splitlines()[0])
    methods: list[tuple[str, Method]] = [
        ("Serial", serial), ("Threads", threads), ("Processes", processes),
        ("Checkpointed batch", checkpointed), ("Array batches", array_batches),
    ]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_signal_files(Path(tmp), args.files)
        print(f"{len(paths)} captures, {os.cpu_count()} CPU cores\n")
        baseline: list[dict[str, Any]] | None = None
        for name, method in methods:
            start = time.perf_counter()
            results = method(paths, Path(tmp))
            seconds = time.perf_counter() - start
            baseline = baseline or results
            rows.append((name, seconds, same(results, baseline)))

    serial_time = rows[0][1]
    print(f"{'Method':<18}{'Time (s)':>10}{'Speedup':>9}{'Throughput (files/s)':>22}  Same")
    print("-" * 65)
    for name, seconds, ok in rows:
        print(f"{name:<18}{seconds:>10.2f}{serial_time / seconds:>8.2f}x"
              f"{len(paths) / seconds:>22.1f}  {'yes' if ok else 'NO'}")
    print("(Array batches: numpy vectorized FFT over stacked signals; shoal.arrays not used)")
    best = min(rows, key=lambda r: r[1])
    print(f"\nFastest here: {best[0]} ({serial_time / best[1]:.2f}x serial)")
    print("Guidelines: threads for I/O and numpy calls that release the GIL, processes for "
          "pure-Python CPU work, array batches when one vectorized call can replace many "
          "small ones, a checkpoint whenever a run is long enough to be interrupted.")


if __name__ == "__main__":
    main()
