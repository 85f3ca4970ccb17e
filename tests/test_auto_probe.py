"""``backend="auto"``: the probe keeps the promises of the backend it may choose.

Its first item runs on a worker thread (a timeout is enforced); CPU-bound
work is probed further in a worker process, where a crash costs one item.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import shoal
import workfns

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})


def test_a_crash_during_the_probe_costs_one_item_not_the_caller(tmp_path: Path) -> None:
    p = run_script(tmp_path, """
        import os, time
        import shoal

        def burn(x):
            if x == 3:
                os._exit(1)
            t0 = time.thread_time()
            while time.thread_time() - t0 < 0.003:
                pass
            return x

        report = shoal.run(burn, range(40))
        print(report.backend, [r.index for r in report.failures],
              type(report.failures[0].error).__name__, len(report.values))
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["processes", "[3]", "WorkerCrashed", "39"]


def test_a_hung_first_item_is_cut_by_the_timeout() -> None:
    t0 = time.monotonic()
    report = shoal.run(workfns.hang_on, ["hang", "a", "b"], timeout=0.5)
    assert time.monotonic() - t0 < 8  # not the 10 s the item hangs for
    assert [r.index for r in report.failures] == [0]
    assert isinstance(report.failures[0].error, TimeoutError)
    assert report.values == ["a", "b"]


def test_tiny_items_never_start_a_process() -> None:
    import psutil

    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    report = shoal.run(workfns.square, range(5000))
    assert report.backend == "sequential" and "us each" in report.backend_reason
    assert {c.pid for c in me.children(recursive=True)} - before == set()


def test_io_bound_work_goes_to_threads() -> None:
    report = shoal.run(workfns.sleep_then_return, [0.02] * 30)
    assert report.backend == "threads" and "I/O-bound" in report.backend_reason


@pytest.mark.parametrize("n", [1, 3])
def test_a_run_that_ends_during_the_probe_says_so(n: int) -> None:
    report = shoal.run(workfns.square, range(n))
    assert report.values == [x * x for x in range(n)]
    assert "during the probe" in report.backend_reason or report.backend == "sequential"
