"""Run reports: a self-contained HTML page of a ``BatchReport``, and its notebook view.

::

    BatchReport.to_html(path) ──> write_html ──> collect (one pass over results)
                                                   │
                                  page.render <────┘   sections as HTML
                                      │
                                      └─> charts (matplotlib, PNG, inlined)
    BatchReport._repr_html_ ──> repr_html: collect only; no numpy, no matplotlib
    shoal report run.db --html ──> checkpoint.read_report ──> write_html

matplotlib (the ``shoal[report]`` extra) and numpy are imported only here,
when a page is made, never by ``import shoal``.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from shoal._core.results import BatchReport, percentile
from shoal._report.rundata import collect

__all__ = ["render_html", "repr_html", "write_html"]


def render_html(report: BatchReport[Any]) -> str:
    """The full report of ``report`` as one HTML document.

    Raises:
        BackendUnavailable: matplotlib (``pip install "shoal[report]"``) is missing.
    """
    from shoal._report.charts import require_matplotlib

    require_matplotlib()  # before the pass over results: fail fast on a big run
    from shoal._report.page import render

    return render(report, collect(report.results))


def write_html(report: BatchReport[Any], path: str | os.PathLike[str]) -> Path:
    """Write the full report of ``report`` to ``path`` (UTF-8); return the path.

    The file is written whole to ``path + ".partial"`` first and then renamed,
    so a reader never sees half a report.

    Raises:
        BackendUnavailable: matplotlib (``pip install "shoal[report]"``) is missing.
        OSError: the file cannot be written.
    """
    target = Path(os.fspath(path))
    text = render_html(report)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    return target


def repr_html(report: BatchReport[Any]) -> str:
    """A compact HTML summary for notebooks: counts, latency, failures by type."""
    data = collect(report.results)
    e = html.escape
    durations = sorted(data.duration)  # the run items' only, as BatchReport.latency
    lat = " · ".join(f"p{q} {_ms(percentile(durations, q))}" for q in (50, 95, 99))
    bar = "".join(
        f'<div title="{k}" style="width:{100.0 * n / data.total:.2f}%;background:{c}"></div>'
        for k, n, c in (("ok", data.ok, "#3a9a5b"), ("failed", data.failed, "#d64545"))
        if n > 0)
    failures = "".join(
        f"<tr><td>{e(g.type_name)}</td><td style='text-align:right'>{g.count:,}</td>"
        f"<td>e.g. #{g.examples[0][0]}</td></tr>" for g in data.failures[:5])
    more = len(data.failures) - 5
    if more > 0:
        failures += f"<tr><td colspan='3'>and {more} more types</td></tr>"
    throughput = report.total / report.wall_time if report.wall_time > 0 else math.inf
    status = " <b>interrupted</b>" if report.interrupted else ""
    return (
        "<div class='shoal-report' style='font-family:sans-serif;font-size:13px'>"
        f"<b>BatchReport</b>{status}: {data.total:,} items, {data.ok:,} ok, "
        f"<span style='color:#c62828'>{data.failed:,} failed</span>, "
        f"{data.restored:,} restored, {data.retried:,} retried ({data.retries:,} retries)"
        "<div style='display:flex;height:8px;width:320px;background:#eee;margin:4px 0'>"
        f"{bar}</div>"
        f"{e(report.backend)} &times;{report.workers} ({e(report.backend_reason or '-')}); "
        f"{report.wall_time:,.3f} s, {throughput:,.1f} items/s; latency {lat}"
        + (f"<table style='margin-top:4px'>{failures}</table>" if failures else "")
        + "<div style='color:#777'>report.to_html(path) writes the full report "
        "with charts</div></div>"
    )


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:,.2f} ms"
