"""Demo 03: progress with ETA and throughput, a failure mid-run, and resuming.

The first run reads captures from a "network share" that drops out half-way:
with ``on_error="all_or_nothing"`` the batch stops at that file, and the
checkpoint keeps every capture finished before it. Once the share is back,
the same call with the same checkpoint restores those from the checkpoint and
measures only the remaining ones (each file's measurements are counted, to
show it). Progress comes from a callback that gets a ``ProgressEvent``;
``progress=True`` would draw a tqdm bar instead.

Run: python examples/signals/03_progress_tracking.py [--files 20]
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _signals import files_argument, make_signal_files, measure

import shoal
from shoal import ProgressEvent

UNREACHABLE: set[str] = set()  # files the "network share" cannot serve right now
CALLS: Counter[str] = Counter()  # how often each file was measured


def fetch_and_measure(path: Path) -> dict[str, Any]:
    """Measure a capture from a slow share (20 ms per file).

    Raises:
        ConnectionError: the share is down for this file.
    """
    time.sleep(0.02)  # the transfer (a simulated workload)
    if path.name in UNREACHABLE:
        raise ConnectionError(f"share dropped out while reading {path.name}")
    CALLS[path.name] += 1
    return measure(path)


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, rounded up so a short ETA never reads 0:00:00."""
    s = math.ceil(max(seconds, 0.0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def show(event: ProgressEvent) -> None:
    """Print one progress line: bar, percent, ETA, throughput, successes."""
    total = event.total or 1
    filled = round(20 * event.done / total)
    eta = "?" if event.eta is None else format_duration(event.eta)
    print(f"Processing: [{'█' * filled}{'░' * (20 - filled)}] {100 * event.done // total}% "
          f"complete | ETA: {eta} | Throughput: {event.rate:.1f} files/sec | "
          f"Success: {event.ok}/{event.done}"
          + (f" ({event.restored} restored)" if event.restored else ""))


def main() -> None:
    args = files_argument(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_signal_files(Path(tmp), args.files)
        checkpoint = Path(tmp, "captures.db")
        stop_at = paths[args.files // 2]
        UNREACHABLE.add(stop_at.name)

        print(f"=== Run 1: {len(paths)} files, the share drops out at {stop_at.name} ===")
        try:
            shoal.map(fetch_and_measure, paths, backend="sequential", progress=show,
                      checkpoint=checkpoint, on_error="all_or_nothing")
        except ConnectionError as exc:
            print(f"Run 1 stopped: {exc}")
        done_before = sum(CALLS.values())
        print(f"Checkpointed before the failure: {done_before} files")

        UNREACHABLE.clear()
        print("\n=== Run 2: the share is back; resume from the checkpoint ===")
        report = shoal.run(fetch_and_measure, paths, backend="threads", workers=4,
                           progress=show, checkpoint=checkpoint)
        print(f"Run 2: {report.restored} restored from the checkpoint, "
              f"{report.total - report.restored} measured now, {report.failed} failed")
        twice = [name for name, n in CALLS.items() if n > 1]
        print(f"Files measured more than once: {len(twice)}")
        print(f"All {len(paths)} files measured: {report.succeeded == len(paths)}")


if __name__ == "__main__":
    main()
