"""Which plotting library draws shoal's HTML report: size and render time, measured.

    python benchmarks/bench_plot_libs.py [--points 100000] [--repeat 3]

Each candidate draws the same two charts of ``--points`` items, one mark per
item, no aggregation: a scatter (end time, duration) and a per-worker timeline
(one horizontal segment per item on 8 worker rows), into one self-contained
HTML file (everything inlined, nothing fetched). Printed per library: the
seconds Python takes to build the file, its size, and the seconds headless
Chromium takes from navigation until the charts are drawn (medians of
``--repeat``). Needs ``pip install matplotlib bokeh plotly playwright`` and
Debian's chromium.

Candidates: matplotlib (PNG images in the page, no JavaScript), Bokeh (its
JavaScript inlined, canvas) and Plotly (plotly.js inlined, SVG; its WebGL
trace is not tried: Chromium runs here with --disable-gpu).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _browser import browser_page, render_seconds

WORKERS = 8


def make_data(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    duration = rng.exponential(0.01, n)
    worker = np.arange(n) % WORKERS
    start = np.zeros(n)
    # Each worker runs its items back to back, with short idle gaps.
    for w in range(WORKERS):
        sel = worker == w
        gaps = rng.exponential(0.001, sel.sum())
        start[sel] = np.cumsum(duration[sel] + gaps) - duration[sel]
    return {"start": start, "end": start + duration, "duration": duration, "worker": worker}


def page(body: str, head: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'>{head}</head>"
            f"<body>{body}</body></html>")


def with_matplotlib(d: dict[str, Any]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    imgs = []
    fig, ax = plt.subplots(figsize=(10, 3), dpi=100)
    ax.plot(d["end"], d["duration"], ",", color="tab:blue")
    imgs.append(fig)
    fig, ax = plt.subplots(figsize=(10, 3), dpi=100)
    segs = np.stack([np.column_stack([d["start"], d["worker"]]),
                     np.column_stack([d["end"], d["worker"]])], axis=1)
    ax.add_collection(LineCollection(segs, linewidths=8, colors="tab:green"))
    ax.autoscale()
    imgs.append(fig)
    tags = []
    for fig in imgs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        b64 = base64.b64encode(buf.getvalue()).decode()
        tags.append(f"<img class='chart' src='data:image/png;base64,{b64}'>")
    ready = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    return page("".join(tags)), ready


def with_bokeh(d: dict[str, Any]) -> tuple[str, str]:
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    p1 = figure(width=1000, height=300, output_backend="canvas")
    p1.scatter(d["end"], d["duration"], size=2)
    p2 = figure(width=1000, height=300, output_backend="canvas")
    p2.segment(d["start"], d["worker"], d["end"], d["worker"], line_width=8)
    html = file_html(column(p1, p2), INLINE, "bench")
    ready = ("() => window.Bokeh && Bokeh.documents.length > 0 && "
             "Bokeh.documents[0].is_idle")
    return html, ready


def with_plotly(d: dict[str, Any]) -> tuple[str, str]:
    import plotly.graph_objects as go

    f1 = go.Figure(go.Scatter(x=d["end"], y=d["duration"], mode="markers",
                              marker={"size": 2}))
    xs = np.column_stack([d["start"], d["end"], np.full(len(d["start"]), np.nan)]).ravel()
    ys = np.repeat(d["worker"].astype(float), 3)
    ys[2::3] = np.nan
    f2 = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line={"width": 8}))
    body = (f1.to_html(full_html=False, include_plotlyjs=True)
            + f2.to_html(full_html=False, include_plotlyjs=False))
    ready = ("() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace')"
             ".length === 2")
    return page(body), ready


CANDIDATES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "matplotlib": with_matplotlib, "bokeh": with_bokeh, "plotly": with_plotly,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = make_data(args.points)
    print(f"{args.points:,} items, 2 charts, one mark per item; medians of {args.repeat}")
    print(f"{'library':<12}{'build s':>9}{'size MB':>9}{'browser s':>11}")
    with tempfile.TemporaryDirectory() as tmp, browser_page() as pg:
        for name, build in CANDIDATES.items():
            builds, renders = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                html, ready = build(data)
                builds.append(time.perf_counter() - t0)
                path = Path(tmp, f"{name}.html")
                path.write_text(html, encoding="utf-8")
                renders.append(render_seconds(pg, path, ready))
                pg.goto("about:blank")
            size = path.stat().st_size / 1e6
            print(f"{name:<12}{statistics.median(builds):>9.2f}{size:>9.2f}"
                  f"{statistics.median(renders):>11.2f}", flush=True)


if __name__ == "__main__":
    main()
