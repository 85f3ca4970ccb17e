"""The signal demos in examples/signals run and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")

SIGNALS = Path(__file__).resolve().parent.parent / "examples" / "signals"


def run_demo(name: str, files: int = 8) -> str:
    p = subprocess.run([sys.executable, str(SIGNALS / name), "--files", str(files)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stdout


def test_01_parallel_batch() -> None:
    out = run_demo("01_parallel_batch.py")
    assert "Generated 8 captures" in out
    assert "Serial     8 files in " in out and "7 ok, 1 failed" in out
    assert "Threads    8 files in " in out
    assert "Speedup of threads over serial: " in out
    assert "Same measurements on every backend: True" in out
    assert "Failed: capture_004.npy: ValueError: capture_004.npy is not a numpy capture" in out
    assert re.search(r"Aggregated over 7 captures: mean amplitude (1\.9[6-9]|2\.0[0-4])\d* V", out)


def test_02_result_aggregation_names_the_outlier_files() -> None:
    out = run_demo("02_result_aggregation.py", files=20)
    assert "count 19, mean " in out
    assert "IQR outlier: capture_001.npy amplitude 3.2" in out
    assert "IQR outlier: capture_019.npy amplitude 0.6" in out
    assert "Z-score outlier: capture_019.npy amplitude 0.6" in out
    assert "Failed: capture_010.npy: capture_010.npy is not a numpy capture" in out
    assert "success rate: 100.0% -> 95.0%" in out
    for line in ["Batch Summary Report", "====================", "Total measurements: 20",
                 "Failed: 1 (5.0%) - ValueError: 1", "Mean amplitude: ",
                 "Outliers detected: ", "Quality score: "]:
        assert line in out, line


def test_02_few_files_explains_the_weak_zscore() -> None:
    out = run_demo("02_result_aggregation.py", files=6)
    assert "Z-score outliers (|z| > 2.5): none among 5 values" in out
    assert "IQR outlier: capture_005.npy amplitude 0.6" in out


def test_03_progress_tracking_resumes_only_the_remaining_files() -> None:
    out = run_demo("03_progress_tracking.py", files=8)
    assert "the share drops out at capture_004.npy" in out
    assert "Run 1 stopped: share dropped out while reading capture_004.npy" in out
    assert "Checkpointed before the failure: 4 files" in out
    assert "Processing: [" in out and "| ETA: " in out and "files/sec" in out
    assert "100% complete" in out
    assert "Run 2: 4 restored from the checkpoint, 4 measured now, 0 failed" in out
    assert "Files measured more than once: 0" in out
    assert "All 8 files measured: True" in out


def test_04_optimization_table() -> None:
    out = run_demo("04_optimization.py")
    assert "Method" in out and "Time (s)  Speedup  Throughput (files/s)" in out
    for method in ("Serial", "Threads", "Checkpointed batch", "Array batches"):
        row = next((line for line in out.splitlines() if line.startswith(method)), "")
        assert row.endswith("yes"), (method, out)
    assert "Serial" in out and "1.00x" in out
    assert "Fastest here: " in out
