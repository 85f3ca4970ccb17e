"""The report as one HTML page: sections, tables and the charts inlined as images.

The page fetches nothing: the charts are ``data:`` PNGs, the style is inline,
and there is no script. Its Content-Security-Policy says so too, so even an
item whose repr looks like markup (it is escaped anyway) could not make the
browser reach the network.

Each section carries its numbers as ``data-`` attributes (``data-count``,
``data-type``, ``data-q``...), for scripts and tests that read the page.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np

from shoal._core.results import BatchReport
from shoal._core.wire import ErrorData
from shoal._report import charts
from shoal._report.rundata import (
    FailureGroup,
    RunData,
    clip,
    error_type_name,
    summarize_item,
)

SLOWEST = 10
PERCENTILES = (50, 95, 99)
NO_TIMES = ("start times not recorded: this run's results carry no start time "
            "(ItemResult.started is 0), so there is no timeline to draw")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
max-width:1160px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;
border-bottom:1px solid #ddd;padding-bottom:4px}
.lead{color:#555}.note{color:#7a5b00;background:#fff8e1;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}th{color:#555;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.slowest td{white-space:nowrap}.slowest td:last-child{white-space:normal}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 14px;min-width:90px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.card.bad b{color:#c62828}img.chart{max-width:100%;display:block}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre.traceback{background:#f6f6f6;padding:8px;overflow:auto;max-height:320px}
details.failure-group{border:1px solid #eee;border-radius:6px;margin:8px 0;padding:6px 10px}
details.failure-group summary{cursor:pointer;font-weight:600}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(epoch: float) -> str:
    if epoch <= 0.0:
        return "unknown"
    return datetime.fromtimestamp(epoch).isoformat(" ", "seconds")


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1.0:
        return f"{value:,.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _rows(pairs: Iterable[tuple[str, str, str]]) -> str:
    # (key for data-key, label, value already escaped)
    return "".join(f'<tr data-key="{_e(k)}"><th>{_e(label)}</th><td>{value}</td></tr>'
                   for k, label, value in pairs)


def _cards(report: BatchReport[Any], data: RunData) -> str:
    cards = [("total", "items", data.total, False), ("ok", "ok", data.ok, False),
             ("failed", "failed", data.failed, data.failed > 0),
             ("retried", "retried items", data.retried, False),
             ("retries", "retries", data.retries, False),
             ("restored", "restored", data.restored, False)]
    out = "".join(
        f'<div class="card{" bad" if bad else ""}" data-key="{key}" data-count="{n}">'
        f"<b>{n:,}</b><span>{label}</span></div>" for key, label, n, bad in cards)
    return f'<div class="cards">{out}</div>'


def _run_section(report: BatchReport[Any], data: RunData) -> str:
    throughput = report.total / report.wall_time if report.wall_time > 0 else math.nan
    facts = [
        ("backend", "backend", _e(report.backend)),
        ("backend_reason", "why this backend", _e(report.backend_reason or "-")),
        ("workers", "workers", _e(report.workers)),
        ("started_at", "started", _e(_when(report.started_at))),
        ("wall_time", "wall time", _e(_seconds(report.wall_time))),
        ("throughput", "throughput",
         "-" if math.isnan(throughput) else _e(f"{throughput:,.1f} items/s")),
        ("interrupted", "interrupted", "yes (Ctrl-C): partial results" if report.interrupted
         else "no"),
    ]
    settings = "".join(
        f'<tr data-setting="{_e(k)}"><th><code>{_e(k)}</code></th>'
        f"<td><code>{_e(summarize_item(v))}</code></td></tr>"
        for k, v in sorted(report.settings.items()))
    settings_html = (f"<table class='settings'>{settings}</table>" if settings
                     else "<p class='note'>no settings recorded</p>")
    return (f'<section id="run"><h2>Run</h2>{_cards(report, data)}'
            f"<table class='facts'>{_rows(facts)}</table>"
            f"<h3>Settings</h3>{settings_html}</section>")


def _throughput_section(cols: charts.Columns | None) -> str:
    if cols is None:
        body = f'<p class="note no-times">{NO_TIMES}</p>'
    else:
        body = _img(charts.throughput_png(cols), "items finished per second over the run")
    return (f'<section id="throughput"><h2>Throughput and failures over time</h2>{body}'
            "</section>")


def _workers_section(data: RunData, cols: charts.Columns | None) -> str:
    if cols is None:
        body = f'<p class="note no-times">{NO_TIMES}</p>'
        attrs = 'data-rows="0"'
    else:
        chart = charts.worker_png(cols)
        timed = int((~np.isnan(cols.start)).sum())
        if chart.detailed:
            how = ("One bar per item, coloured by outcome (green ok, orange ok after retries, "
                   "red failed); gaps are idle time.")
        else:
            sampled = ", evenly sampled" if chart.failure_marks < chart.failures else ""
            how = (f"{timed:,} items{' (workers ran several at once)' if chart.concurrent else ''}"
                   ": each row is shaded by how many items its worker ran at each moment "
                   "(exact, not sampled; white is idle); red ticks mark failures "
                   f"({chart.failure_marks:,} of {chart.failures:,} shown{sampled}).")
        hidden = (f" {chart.hidden_workers} less busy workers ({chart.hidden_items:,} items) "
                  "are not shown." if chart.hidden_workers else "")
        body = f'<p class="lead">{_e(how + hidden)}</p>{_img(chart.png, "per-worker timeline")}'
        if timed < data.ran:
            body += (f'<p class="note">{data.ran - timed:,} items without a start time are '
                     "not drawn.</p>")
        mode = "items" if chart.detailed else "occupancy"
        attrs = (f'data-rows="{chart.rows}" data-mode="{mode}" '
                 f'data-hidden-workers="{chart.hidden_workers}"')
    return (f'<section id="workers" data-workers="{len(data.worker_names)}" {attrs}>'
            f"<h2>Workers</h2>{body}</section>")


def _latency_section(report: BatchReport[Any], cols: charts.Columns) -> str:
    if cols.duration.size == 0:
        return ('<section id="latency" data-items="0"><h2>Latency</h2>'
                '<p class="note">no item ran in this run (all restored)</p></section>')
    # numpy's default percentile is the linear interpolation BatchReport.latency uses.
    marks = {q: float(v) for q, v in zip(PERCENTILES, np.percentile(cols.duration, PERCENTILES),
                                         strict=True)}
    stats = "".join(f'<div class="card" data-q="{q}" data-seconds="{v!r}"><b>{_e(_seconds(v))}'
                    f"</b><span>p{q}</span></div>" for q, v in marks.items())
    k = min(SLOWEST, cols.duration.size)
    top = np.argpartition(-cols.duration, k - 1)[:k]
    top = top[np.argsort(-cols.duration[top], kind="stable")]
    rows = []
    for t in top:
        r = report.results[int(cols.position[t])]  # one lookup per listed item
        status = "ok" if r.ok else f"failed: {_e(error_type_name(r.error))}"
        rows.append(
            f'<tr class="slow-item" data-index="{r.index}"><td class="num">{r.index}</td>'
            f"<td class='num'>{_e(_seconds(r.duration))}</td><td>{_e(r.worker)}</td>"
            f"<td class='num'>{r.attempts}</td><td>{status}</td>"
            f"<td><code>{_e(summarize_item(r.item))}</code></td></tr>")
    table = ("<table class='slowest'><tr><th>index</th><th>duration</th><th>worker</th>"
             "<th>attempts</th><th>outcome</th><th>item</th></tr>" + "".join(rows) + "</table>")
    chart = _img(charts.latency_png(cols.duration, marks), "latency distribution")
    return (f'<section id="latency" data-items="{cols.duration.size}"><h2>Latency</h2>'
            f'<div class="cards">{stats}</div>{chart}'
            f"<h3>Slowest {k} items</h3>{table}</section>")


def _failure_group(group: FailureGroup, first: bool) -> str:
    assert group.first is not None and group.first.error is not None
    err = ErrorData.of(group.first.error)
    examples = "".join(f'<li class="example" data-index="{i}">#{i}: <code>{_e(s)}</code></li>'
                       for i, s in group.examples)
    more = group.count - len(group.examples)
    more_html = f"<p class='lead'>and {more:,} more</p>" if more > 0 else ""
    return (f'<details class="failure-group" data-type="{_e(group.type_name)}" '
            f'data-count="{group.count}"{" open" if first else ""}>'
            f"<summary>{_e(group.type_name)} &times; {group.count:,}</summary>"
            f"<p>first: item #{group.first.index}: <code>{_e(clip(str(group.first.error)))}"
            f"</code> (attempts: {group.first.attempts}, worker: {_e(group.first.worker)})</p>"
            f"<ul class='examples'>{examples}</ul>{more_html}"
            f"<pre class='traceback'>{_e(err.traceback or '(no traceback recorded)')}</pre>"
            "</details>")


def _failures_section(data: RunData) -> str:
    if not data.failures:
        body = '<p class="lead">No item failed.</p>'
    else:
        body = "".join(_failure_group(g, i == 0) for i, g in enumerate(data.failures))
    return (f'<section id="failures" data-count="{data.failed}" data-groups="{len(data.failures)}">'
            f"<h2>Failures</h2>{body}</section>")


def render(report: BatchReport[Any], data: RunData) -> str:
    """The whole page for ``report`` (``data`` is ``collect(report.results)``)."""
    cols = charts.Columns.of(data, report.started_at)
    timed = cols if bool((~np.isnan(cols.start)).any()) else None
    status = "interrupted" if report.interrupted else "finished"
    lead = (f"{data.total:,} items {status}: {data.ok:,} ok, {data.failed:,} failed"
            f"{f', {data.restored:,} restored from a checkpoint' if data.restored else ''}"
            f" - {report.backend} x{report.workers}, {_seconds(report.wall_time)}")
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>shoal run report</title><style>{CSS}</style></head><body>"
        f"<h1>shoal run report</h1><p class='lead'>{_e(lead)}</p>"
        f"<p class='lead'>made {_e(_when(time.time()))}</p>"
        + _run_section(report, data) + _throughput_section(timed)
        + _workers_section(data, timed) + _latency_section(report, cols)
        + _failures_section(data) + "</body></html>"
    )
