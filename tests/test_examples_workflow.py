"""The workflow seed's splitting example prints what the seed's notebook printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "workflow" / "splitting.py"


def test_splitting_example_matches_the_seed() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    items = list(range(28))
    batches = [items[0:6], items[6:12], items[12:18], items[18:24], items[24:28]]
    assert out[0] == f"Generated items: {items}"
    assert out[1] == f"Item batches: {batches}"
    assert out[3] == f"Processed batches: {[[i / 42 for i in b] for b in batches]}"
    assert out[4] == f"Processed items: {[i / 42 for i in items]}"
