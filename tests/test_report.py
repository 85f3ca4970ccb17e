"""The HTML run report without a browser: its numbers, its fallbacks, its errors.

What the page looks like and that it loads cleanly is checked in Chromium by
test_report_browser.py; here the page is read as text, through the
``data-`` attributes each section carries.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shoal
from reportdata import realistic_report
from shoal import BatchReport, ItemResult
from shoal._report import render_html, repr_html
from shoal._report import rundata as collect_mod
from shoal._report.charts import MAX_WORKER_ROWS, occupancy
from shoal._report.page import NO_TIMES
from shoal.cli import main as cli_main

pytest.importorskip("matplotlib", reason='the report needs matplotlib: pip install "shoal[report]"')


def attrs(page: str, pattern: str) -> list[Any]:
    return re.findall(pattern, page)


def test_one_pass_counts_what_the_report_holds() -> None:
    report, want = realistic_report()
    data = collect_mod.collect(report.results)
    assert (data.total, data.ok, data.failed, data.restored) == (
        want.total, want.ok, want.failed, want.restored)
    assert (data.retried, data.retries) == (want.retried, want.retries)
    assert {g.type_name: g.count for g in data.failures} == want.by_type
    assert [g.count for g in data.failures] == sorted(want.by_type.values(), reverse=True)
    assert all(len(g.examples) == min(g.count, collect_mod.EXAMPLES_PER_GROUP)
               for g in data.failures)
    # Restored items are in the counts, never in the columns the timelines draw.
    assert data.ran == want.total - want.restored
    assert "old" not in data.worker_names and len(data.worker_names) == want.workers


def test_occupancy_is_exact() -> None:
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    got = occupancy(np.array([0.0, 0.5]), np.array([1.0, 2.0]), edges)
    assert got == pytest.approx([1.5, 1.0, 0.0])
    rng = np.random.default_rng(3)
    start = rng.uniform(0, 10, 300)
    end = start + rng.exponential(0.5, 300)
    edges = np.linspace(0, 12, 97)
    overlap = (np.minimum(end[:, None], edges[None, 1:])
               - np.maximum(start[:, None], edges[None, :-1])).clip(min=0).sum(axis=0)
    assert occupancy(start, end, edges) == pytest.approx(overlap / np.diff(edges))


def test_page_shows_the_runs_numbers() -> None:
    report, want = realistic_report()
    page = render_html(report)
    cards = dict(attrs(page, r'class="card[^"]*" data-key="(\w+)" data-count="(\d+)"'))
    assert cards == {"total": str(want.total), "ok": str(want.ok), "failed": str(want.failed),
                     "retried": str(want.retried), "retries": str(want.retries),
                     "restored": str(want.restored)}
    groups = dict(attrs(page, r'class="failure-group" data-type="(\w+)" data-count="(\d+)"'))
    assert groups == {k: str(v) for k, v in want.by_type.items()}
    assert page.count("<pre class='traceback'>") == len(want.by_type)
    assert "segfault in native_call" in page  # the crashed worker's own traceback
    for q, seconds in attrs(page, r'data-q="(\d+)" data-seconds="([^"]+)"'):
        assert float(seconds) == pytest.approx(report.latency(float(q)))
    slow = [int(i) for i in attrs(page, r'class="slow-item" data-index="(\d+)"')]
    assert len(slow) == 10 and slow[0] == 77  # the item made 0.4 s slower
    assert 'data-workers="4" data-rows="4" data-mode="items"' in page
    assert len(attrs(page, r"<img class=\"chart\"")) == 3
    assert NO_TIMES not in page


def test_page_fetches_nothing() -> None:
    report, _ = realistic_report()
    report.results[0].item = '<img src="http://example.invalid/x.png"><script>alert(1)</script>'
    page = render_html(report)
    assert "<script" not in page and "&lt;script&gt;" in page
    # Every src/href is inline data; the policy forbids anything else anyway.
    assert all(v.startswith("data:") for v in attrs(page, r'(?:src|href)="([^"]*)"'))
    assert "default-src 'none'; img-src data:" in page


def test_without_start_times_the_timelines_say_so() -> None:
    report, want = realistic_report(timed=False)
    page = render_html(report)
    assert page.count(NO_TIMES) == 2  # throughput and workers
    assert len(attrs(page, r"<img class=\"chart\"")) == 1  # latency needs no start time
    assert f'data-count="{want.failed}"' in page


def test_big_runs_are_shaded_by_occupancy_and_many_workers_capped() -> None:
    workers = MAX_WORKER_ROWS + 13  # coprime with 10: every worker runs items
    report, _ = realistic_report(8_000, workers=workers)
    page = render_html(report)
    assert (f'data-workers="{workers}" data-rows="{MAX_WORKER_ROWS}" data-mode="occupancy" '
            'data-hidden-workers="13"') in page
    assert "less busy workers" in page


def test_a_worker_running_items_at_once_is_shaded_not_barred() -> None:
    # asyncio: one worker name, 200 items overlapping in time.
    results: list[ItemResult[Any]] = [
        ItemResult(i, i, ok=i % 50 != 0, error=None if i % 50 else TimeoutError("slow"),
                   duration=0.1, worker="asyncio", started=1000.0 + i * 0.001)
        for i in range(200)]
    page = render_html(BatchReport(results, "asyncio", "", 100, 0.3, started_at=1000.0))
    assert 'data-rows="1" data-mode="occupancy"' in page
    assert "workers ran several at once" in page


def test_empty_and_all_restored_runs_render() -> None:
    empty: BatchReport[Any] = BatchReport([], "sequential", "", 1, 0.0)
    assert 'id="failures" data-count="0"' in render_html(empty)
    restored: BatchReport[Any] = BatchReport(
        [ItemResult(i, i, ok=True, restored=True) for i in range(3)], "threads", "", 2, 0.01)
    assert "all restored" in render_html(restored)


def test_to_html_writes_the_file_whole(tmp_path: Path) -> None:
    report, _ = realistic_report(50)
    out = report.to_html(tmp_path / "r.html")
    assert out == tmp_path / "r.html" and out.read_text(encoding="utf-8").endswith("</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no .partial left


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: Any) -> None:
    report, _ = realistic_report(20)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(shoal.BackendUnavailable, match=r'pip install "shoal\[report\]"'):
        report.to_html(tmp_path / "r.html")
    assert not list(tmp_path.iterdir())


def test_repr_html_is_compact_and_light() -> None:
    report, want = realistic_report()
    report.backend_reason = "<b>probe</b>"
    text = report._repr_html_()
    assert text == repr_html(report)
    assert f"{want.failed:,} failed" in text and f"{want.retried:,} retried" in text
    assert "&lt;b&gt;probe&lt;/b&gt;" in text and "<img" not in text
    code = ("import sys, shoal\n"
            "r = shoal.run(int, ['1', 'x'], backend='sequential')\n"
            "assert 'failed' in r._repr_html_()\n"
            "print([m for m in ('numpy', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def fails_on_multiples_of_five(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"multiple of five: {x}")
    if x == 7:
        raise KeyError("seven")
    return x


def test_cli_writes_the_report_of_a_checkpoint(tmp_path: Path, capsys: Any) -> None:
    db, out = tmp_path / "run.db", tmp_path / "out.html"
    shoal.run(fails_on_multiples_of_five, range(40), backend="threads", workers=3,
              checkpoint=str(db))
    assert cli_main(["report", str(db), "--html", str(out)]) == 0
    assert f"html report: {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    groups = dict(attrs(page, r'class="failure-group" data-type="(\w+)" data-count="(\d+)"'))
    assert groups == {"ValueError": "8", "KeyError": "1"}
    assert 'data-key="total" data-count="40"' in page
    assert "multiple of five: 0" in page  # the stored traceback
    assert "(item not stored in the checkpoint)" in page


def test_a_checkpoint_with_start_times_draws_timelines(tmp_path: Path) -> None:
    import sqlite3

    from shoal._report.checkpoint import read_report

    db = tmp_path / "run.db"
    shoal.run(fails_on_multiples_of_five, range(40), backend="threads", workers=3,
              checkpoint=str(db))
    report = read_report(db)  # the checkpoint keeps ItemResult.started (issue 12)
    assert all(r.started > 0 for r in report.results)
    page = render_html(report)
    assert NO_TIMES not in page and len(attrs(page, r"<img class=\"chart\"")) == 3
    assert f'data-rows="{len({r.worker for r in report.results})}"' in page
    conn = sqlite3.connect(db)
    with conn:  # rows whose start time is unknown (0.0): no timeline to draw
        conn.execute("UPDATE results SET started = 0")
    conn.close()
    assert NO_TIMES in render_html(read_report(db))


def test_cli_without_matplotlib_says_which_extra(tmp_path: Path, monkeypatch: Any,
                                                 capsys: Any) -> None:
    db = tmp_path / "run.db"
    shoal.run(abs, range(5), backend="sequential", checkpoint=str(db))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli_main(["report", str(db), "--html", str(tmp_path / "out.html")]) == 2
    assert 'pip install "shoal[report]"' in capsys.readouterr().err


def test_a_real_run_draws_its_timelines() -> None:
    report = shoal.run(fails_on_multiples_of_five, range(60), backend="threads", workers=3,
                       retries=1)
    page = render_html(report)
    assert NO_TIMES not in page
    assert 'data-mode="items"' in page and len(attrs(page, r"<img class=\"chart\"")) == 3
