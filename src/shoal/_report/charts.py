"""The report's three charts, drawn with matplotlib into PNG images.

Every chart is drawn from numbers aggregated with numpy first (a histogram, a
grid of busy time), so its cost and its PNG's size do not grow with the item
count beyond one sort: a million items make a picture as small as a thousand.
The per-worker timeline draws one bar per item up to ``DETAIL_LIMIT`` items;
past that it shades each worker's row by how many items it ran at each moment,
computed exactly (no sampling, so no invented idle gaps), and marks failures,
sampled to ``MAX_FAILURE_MARKS``.

matplotlib is used through ``Figure`` and the Agg canvas, never ``pyplot``:
no global figure state, no GUI backend chosen at import.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shoal._core.errors import BackendUnavailable
from shoal._report.rundata import FAILED, OK, RETRIED_OK, RunData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DETAIL_LIMIT = 5_000  # items drawn one bar each; more are shaded by occupancy
MAX_WORKER_ROWS = 48
MAX_FAILURE_MARKS = 2_000
GRID_COLUMNS = 800  # time bins of the occupancy shading: about one per pixel
WIDTH_IN, DPI = 11.0, 100
COLORS = {OK: "#3a9a5b", RETRIED_OK: "#e8a33d", FAILED: "#d64545"}
LABELS = {OK: "ok", RETRIED_OK: "ok after retries", FAILED: "failed"}

FloatArray = npt.NDArray[np.float64]


def require_matplotlib() -> None:
    """Import matplotlib now, so a missing extra is reported before any work.

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "the HTML report draws its charts with matplotlib, which is not installed: "
            'pip install "shoal[report]"'
        ) from exc


@dataclass
class Columns:
    """The run items' columns as numpy arrays, times relative to the run's start."""

    position: npt.NDArray[np.int64]
    duration: FloatArray
    start: FloatArray  # seconds since t0; NaN where the start time is unknown
    worker: npt.NDArray[np.int32]
    outcome: npt.NDArray[np.int8]
    worker_names: list[str]

    @classmethod
    def of(cls, data: RunData, started_at: float) -> Columns:
        started = np.frombuffer(data.started, dtype=np.float64)
        known = started > 0.0
        # The run's own start, unless an item claims to have started earlier
        # (clocks of other hosts): the axis must hold every item.
        t0 = started_at if started_at > 0.0 else math.inf
        if known.any():
            t0 = min(t0, float(started[known].min()))
        start = np.where(known, started - (t0 if math.isfinite(t0) else 0.0), np.nan)
        return cls(
            np.frombuffer(data.position, dtype=np.int64),
            np.frombuffer(data.duration, dtype=np.float64), start,
            np.frombuffer(data.worker, dtype=np.int32),
            np.frombuffer(data.outcome, dtype=np.int8), data.worker_names,
        )


def occupancy(start: FloatArray, end: FloatArray, edges: FloatArray) -> FloatArray:
    """Average number of intervals ``[start, end)`` open over each bin of ``edges``.

    Exact, in O(n log n): the busy time up to ``e`` is ``sum(max(0, e - s)) -
    sum(max(0, e - end))``, and each sum is read off sorted prefix sums.
    """
    def ramp(points: FloatArray) -> FloatArray:
        p = np.sort(points)
        prefix = np.concatenate([[0.0], np.cumsum(p)])
        k = np.searchsorted(p, edges, side="right")
        return k * edges - prefix[k]  # type: ignore[no-any-return]

    busy = ramp(start) - ramp(end)
    return np.diff(busy) / np.diff(edges)  # type: ignore[no-any-return]


def _figure(height: float) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No metadata: the same report gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def throughput_png(cols: Columns) -> bytes:
    """Items finished per second over the run, stacked by outcome."""
    timed = ~np.isnan(cols.start)
    end = cols.start[timed] + cols.duration[timed]
    outcome = cols.outcome[timed]
    span = max(float(end.max()), 1e-6)
    bins = int(min(120, max(10, end.size // 5)))
    edges = np.linspace(0.0, span, bins + 1)
    width = edges[1] - edges[0]
    fig, ax = _figure(3.0)
    bottom = np.zeros(bins)
    for kind in (OK, RETRIED_OK, FAILED):
        rate = np.histogram(end[outcome == kind], edges)[0] / width
        if rate.any():  # one filled step artist per outcome, stacked: cheap at any bin count
            ax.stairs(bottom + rate, edges, baseline=bottom.copy(), fill=True,
                      color=COLORS[kind], label=LABELS[kind])
            bottom += rate
    ax.set_xlim(0.0, span)
    ax.set_xlabel("seconds since the run started (by each item's end)")
    ax.set_ylabel("items finished / s")
    ax.legend(loc="upper right", frameon=False, ncols=3)
    return _png(fig)


def _natural_key(name: str) -> list[Any]:
    # "Thread-10" after "Thread-9", as a person reads them.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class WorkerChart:
    png: bytes
    rows: int  # workers drawn
    hidden_workers: int  # the least busy ones left out past MAX_WORKER_ROWS
    hidden_items: int
    detailed: bool  # one bar per item (else occupancy shading)
    concurrent: bool  # some worker ran items at once
    failures: int  # failed items on the rows drawn
    failure_marks: int  # of which marked (all of them, unless sampled)


def worker_png(cols: Columns) -> WorkerChart:
    """Which item ran on which worker and when: bars, or occupancy for big or concurrent runs."""
    timed = ~np.isnan(cols.start)
    start, duration = cols.start[timed], cols.duration[timed]
    worker, outcome = cols.worker[timed], cols.outcome[timed]
    busy = np.bincount(worker, weights=duration, minlength=len(cols.worker_names))
    present = np.flatnonzero(np.bincount(worker, minlength=len(cols.worker_names)))
    shown = present
    if present.size > MAX_WORKER_ROWS:
        shown = present[np.argsort(-busy[present], kind="stable")[:MAX_WORKER_ROWS]]
    names = cols.worker_names
    shown = np.array(sorted(shown, key=lambda w: _natural_key(names[w])), dtype=np.int64)
    row_of = np.full(len(names), -1, dtype=np.int64)
    row_of[shown] = np.arange(shown.size)
    row = row_of[worker]
    keep = row >= 0
    hidden_items = int((~keep).sum())
    start, duration, row, outcome = start[keep], duration[keep], row[keep], outcome[keep]
    end = start + duration
    span = max(float(end.max()), 1e-6)

    fig, ax = _figure(1.2 + 0.3 * shown.size)
    concurrent = start.size <= DETAIL_LIMIT and runs_items_at_once(row, start, end)
    detailed = start.size <= DETAIL_LIMIT and not concurrent
    if detailed:
        from matplotlib.collections import PolyCollection

        y0, y1 = row - 0.38, row + 0.38
        verts = np.stack([np.column_stack(c) for c in
                          ((start, y0), (end, y0), (end, y1), (start, y1))], axis=1)
        colors = [COLORS[int(k)] for k in outcome]
        ax.add_collection(PolyCollection(list(verts), facecolors=colors, linewidths=0))
        marks = failures = int((outcome == FAILED).sum())
    else:
        ax.grid(False)  # white grid lines would read as idle time
        edges = np.linspace(0.0, span, GRID_COLUMNS + 1)
        grid = np.zeros((shown.size, GRID_COLUMNS))
        order = np.argsort(row, kind="stable")
        bounds = np.searchsorted(row[order], np.arange(shown.size + 1))
        for r in range(shown.size):
            sel = order[bounds[r]:bounds[r + 1]]
            grid[r] = occupancy(start[sel], end[sel], edges)
        # A big run's shading tells it for free: a pixel averaging over 1 item running.
        concurrent = concurrent or bool(grid.max() > 1.01)
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="Greens",
                          vmin=0.0, vmax=max(1.0, float(grid.max())),
                          extent=(0.0, span, shown.size - 0.5, -0.5))
        fig.colorbar(image, ax=ax, pad=0.01, label="items running")
        failed = np.flatnonzero(outcome == FAILED)
        failures = int(failed.size)
        if failed.size > MAX_FAILURE_MARKS:  # evenly spaced, so bursts stay visible
            failed = failed[np.linspace(0, failed.size - 1, MAX_FAILURE_MARKS).astype(np.int64)]
        ax.scatter(start[failed], row[failed], marker="|", s=80, color=COLORS[FAILED],
                   linewidths=1.0, label="failed")
        marks = int(failed.size)
    ax.set_xlim(0.0, span)
    ax.set_ylim(shown.size - 0.5, -0.5)
    ax.set_yticks(np.arange(shown.size), [_short(names[w]) for w in shown])
    ax.set_xlabel("seconds since the run started")
    return WorkerChart(_png(fig), int(shown.size), int(present.size - shown.size),
                       hidden_items, detailed, concurrent, failures, marks)


def runs_items_at_once(row: npt.NDArray[np.int64], start: FloatArray, end: FloatArray) -> bool:
    """True when some worker ran items concurrently (asyncio, a Dask worker's threads).

    Bars drawn over each other would hide that, so such runs are shaded by
    occupancy at any size. Two items of one row overlap if, in start order,
    one starts before the previous one ends (checking neighbours is enough:
    if item j starts before an earlier item i ends, so does item i + 1). An
    overlap counts only past half the shorter item, so that back-to-back
    items whose clocks differ by microseconds do not.
    """
    order = np.lexsort((start, row))
    s, e, r = start[order], end[order], row[order]
    shorter = np.minimum(e[:-1] - s[:-1], e[1:] - s[1:])
    overlap = (r[1:] == r[:-1]) & (e[:-1] - s[1:] > 0.5 * shorter)
    return bool(overlap.sum() > 0.01 * max(1, s.size))


def _short(name: str, limit: int = 28) -> str:
    name = name or "(unnamed)"
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def latency_png(duration: FloatArray, marks: dict[int, float]) -> bytes:
    """Histogram of item durations, with the percentiles in ``marks`` drawn on it."""
    positive = duration[duration > 0.0]
    fig, ax = _figure(3.0)
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (0.0, 1.0)
    if positive.size and hi / lo > 100.0:  # spans decades: a log axis shows the tail
        edges = np.geomspace(lo, hi * 1.0001, 61)
        ax.set_xscale("log")
        counts = np.histogram(positive, edges)[0]
    else:
        edges = np.linspace(0.0, max(hi, 1e-9) * 1.0001, 61)
        counts = np.histogram(duration, edges)[0]
    ax.stairs(counts, edges, fill=True, color="#6b8fc7")
    for q, value in marks.items():
        if value > 0.0 or ax.get_xscale() == "linear":
            ax.axvline(value, color="#333333", linewidth=1.0, linestyle="--")
            ax.annotate(f"p{q}", (value, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=9)
    ax.set_xlabel("seconds per item (last attempt)")
    ax.set_ylabel("items")
    return _png(fig)
