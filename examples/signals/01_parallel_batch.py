"""Demo 01: process many signal captures in parallel, serial vs threads vs processes.

Synthetic captures are written to a temporary directory; ``measure`` (in
``_signals.py``) loads each one and computes amplitude, RMS, frequency and SNR.
The same ``shoal.run`` call runs the batch on each backend; only ``backend=``
changes. One capture is corrupt on purpose: it fails alone, as data, and the
other results are unaffected.

Run: python examples/signals/01_parallel_batch.py [--files 20]
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _signals import files_argument, make_signal_files, measure

import shoal


def main() -> None:
    args = files_argument(__doc__.splitlines()[0])
    cpus = os.cpu_count() or 1
    backends: list[tuple[str, dict[str, Any]]] = [
        ("Serial", {"backend": "sequential"}),
        ("Threads", {"backend": "threads", "workers": 2 * cpus}),
        ("Processes", {"backend": "processes", "workers": cpus}),
    ]

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_signal_files(Path(tmp), args.files, corrupt=[args.files // 2])
        print(f"Generated {len(paths)} captures in a temporary directory ({cpus} CPU cores)")
        reports = {}
        for name, options in backends:
            report = shoal.run(measure, paths, **options)
            reports[name] = report
            print(f"{name:<10} {report.total} files in {report.wall_time:.3f} s "
                  f"({report.throughput:.1f} files/s, {report.workers} workers): "
                  f"{report.succeeded} ok, {report.failed} failed")

    serial = reports["Serial"]
    for name, report in reports.items():
        if name != "Serial":
            print(f"Speedup of {name.lower()} over serial: "
                  f"{serial.wall_time / report.wall_time:.2f}x")
    same = all(r.values == serial.values for r in reports.values())
    print(f"Same measurements on every backend: {same}")
    for failure in serial.failures:
        print(f"Failed: {failure.item.name}: {type(failure.error).__name__}: {failure.error}")
    amplitudes = [v["amplitude"] for v in serial.values if v is not None]
    print(f"Aggregated over {len(amplitudes)} captures: mean amplitude "
          f"{statistics.fmean(amplitudes):.4f} V, min {min(amplitudes):.4f} V, "
          f"max {max(amplitudes):.4f} V")


if __name__ == "__main__":
    main()
