"""Run every benchmark script in turn (``make bench``), each in its own interpreter.

    python benchmarks/run_all.py [--quick]

``--quick`` asks every script for smaller inputs of the same shape. The
scripts print their own figures and ratios; this only runs them one after the
other, so that no two compete for the machine's cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# script -> its arguments for --quick
SCRIPTS = {
    "bench_engine.py": ["--quick"],
    "bench_processes.py": ["--quick"],
    "bench_dask.py": ["--quick"],
    "bench_checkpoint.py": ["--items", "500", "--repeat", "1"],
    "bench_pool.py": ["--quick"],
    "bench_report.py": ["--items", "100000"],
}


def main(argv: list[str]) -> int:
    if argv not in ([], ["--quick"]):
        print("usage: run_all.py [--quick]", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    failed = []
    for name, quick in SCRIPTS.items():
        print(f"\n===== {name} =====", flush=True)
        args = quick if argv else []
        code = subprocess.run([sys.executable, str(here / name), *args], check=False).returncode
        if code != 0:
            failed.append(f"{name} (exit {code})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
