"""Every script in examples/nodes and examples/flow runs and prints what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script -> lines its output must contain
EXPECTED: dict[str, list[str]] = {
    "nodes/translation_service.py": [
        "Processed 4 items",
        "Processed 4 items concurrently",
        "Translated to 6 languages",
        "  Korean: [KO] Hello, how are you?",
    ],
    "nodes/sentiment_analyzer.py": [
        "  ID 1: POSITIVE (confidence: 1.0)",
        "  ID 2: NEGATIVE (confidence: 1.0)",
        "  ID 4: ERROR - Invalid text: ",
    ],
    "nodes/square_calculator.py": ["  5^2 = 25, 5^3 = 125", "Same results: True"],
    "nodes/performance_comparison.py": ["Results: 8 items processed", "Speedup: "],
    "nodes/error_handling.py": [
        "Successful: 3 items",
        "Failed: 2 items",
        "  4. another ERROR - Error: Simulated error processing: another ERROR",
    ],
    "flow/document_processor.py": [
        "Processed: 3/4",
        "  2: FAILED - no such document: path/to/missing.pdf",
    ],
    "flow/rate_limited_processor.py": ["API call 4: True", "Engine rate limit: 5/5 calls ok"],
    "flow/retry_with_backoff.py": [
        "batch_with_retry: 6/6 succeeded, indices [0, 1, 2, 3, 4, 5]",
        "engine retries: 6/6 succeeded, calls [1, 3, 1, 3, 1, 3]",
    ],
    "flow/dynamic_batching.py": [
        "batch of 10 (batch size was 10, now ",  # the new size depends on timing
        "Processed 100/100 items",
    ],
    "flow/chunked_processing.py": [
        "Processed 20/50",
        "Processed 50/50",
        "Sum of squares: 40425",
        "stream: {'index': 1, 'error': 'negative value -1', 'status': 'failed'}",
    ],
    # nadoo_flow's list nodes add their counts next to the output key.
    "flow/map_filter_reduce.py": [
        "map: {'translations': ['안녕하세요', '세계', 'AI'], 'total': 3, 'succeeded': 3, "
        "'failed': 0}",
        "filter: {'confident_predictions': [{'text': 'A', 'confidence': 0.9}, "
        "{'text': 'C', 'confidence': 0.95}], 'original_count': 3, 'filtered_count': 2}",
        "reduce: {'total_score': 12, 'processed_count': 3}",
        "aggregate: {'grouped': {'fruit': ['apple', 'pear'], 'vegetable': ['leek']}, "
        "'processed_count': 3}",
        "consensus: 4 (agreement 0.67)",
    ],
    "flow/sentiment_batch.py": ["Positive: 2", "Negative: 1", "Neutral: 1"],
}


def test_every_example_is_checked() -> None:
    scripts = {
        p.relative_to(EXAMPLES).as_posix()
        for folder in ("nodes", "flow")
        for p in (EXAMPLES / folder).glob("*.py")
    }
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True, text=True, encoding="utf-8", timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for expected in EXPECTED[script]:
        assert any(line.startswith(expected) for line in lines), (expected, proc.stdout)
