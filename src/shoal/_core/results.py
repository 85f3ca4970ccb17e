"""What a batch produces: one ``ItemResult`` per item and a ``BatchReport``."""

from __future__ import annotations

import math
import traceback as _tb
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import os
    from pathlib import Path

T = TypeVar("T")


@dataclass(slots=True)
class ItemResult(Generic[T]):
    """The outcome of one item.

    Attributes:
        index: the item's position in the input (0-based).
        item: the input item itself.
        ok: True when ``fn`` returned; ``value`` holds what it returned.
        value: the return value (None on failure).
        error: the exception of the last attempt (None on success). For an
            exception raised in another process its ``__cause__`` is a
            ``RemoteTraceback`` holding the worker-side traceback.
        attempts: how many times the item was run (1 + retries used).
        duration: seconds of the last attempt. Inside a chunk of several items
            this is the chunk's time divided by its size.
        worker: which worker ran it (thread name, ``pid:1234``, a Dask address).
        restored: True when the result came from a checkpoint, not a new run.
        started: when its last attempt started, in seconds since the epoch
            (``time.time()``); 0.0 when unknown.
    """

    index: int
    item: Any
    ok: bool
    value: T | None = None
    error: BaseException | None = None
    attempts: int = 1
    duration: float = 0.0
    worker: str = ""
    restored: bool = False
    started: float = 0.0

    @property
    def traceback(self) -> str:
        """The formatted traceback of ``error`` (worker side included), or ''."""
        if self.error is None:
            return ""
        return "".join(_tb.format_exception(self.error))

    def unwrap(self) -> T:
        """Return ``value``, or raise ``error`` if the item failed.

        Raises:
            BaseException: the item's own exception.
        """
        if not self.ok:
            assert self.error is not None
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(slots=True)
class Segment:
    """Settled results of consecutive indices ``start .. start+count-1``.

    Either ``results`` holds finished ``ItemResult`` objects, or, on the fast
    path (every item succeeded on one attempt), the columns do and no per-item
    object is built until somebody asks for one. ``durations`` holds each
    item's own seconds when the backend measured them; otherwise every item
    gets the average, ``per_item``. ``ended`` is when the last one finished
    (epoch seconds); each item's start is counted back from it.
    """

    start: int
    count: int
    results: list[ItemResult[Any]] | None = None
    items: Sequence[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    attempt: int = 1
    per_item: float = 0.0
    worker: str = ""
    durations: list[float] | None = None
    ended: float = 0.0

    def item_results(self) -> list[ItemResult[Any]]:
        if self.results is None:
            s, a, w = self.start, self.attempt, self.worker
            durations = self.durations or [self.per_item] * self.count
            starts = starts_of(self.ended, durations)
            self.results = [
                ItemResult(s + k, x, True, v, None, a, d, w, False, t)
                for k, (x, v, d, t) in enumerate(zip(self.items, self.values, durations, starts,
                                                     strict=True))
            ]
        return self.results


def starts_of(ended: float, durations: Sequence[float]) -> list[float]:
    """When each of consecutive items started, if the last ended at ``ended``."""
    out = [0.0] * len(durations)
    t = ended
    for k in range(len(durations) - 1, -1, -1):
        t -= durations[k]
        out[k] = t
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def format_seconds(seconds: float) -> str:
    """A duration in readable units: ``35.2 µs``, ``3.25 ms``, ``1.16 s``, ``0:02:05``.

    Three significant digits below a minute, ``H:MM:SS`` from a minute on; one
    format for every time shoal prints (summaries, progress, the command line).
    NaN (no measurement) is ``-``.
    """
    if math.isnan(seconds):
        return "-"
    if seconds == 0 or math.isinf(seconds):
        return f"{seconds:g} s"
    if abs(seconds) >= 59.95:
        s = round(abs(seconds))
        sign = "-" if seconds < 0 else ""
        return f"{sign}{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        value = seconds / scale
        digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
        # 999.6 µs rounds to "1000 µs": show it in the next unit, as 1.00 ms.
        if round(abs(value), digits) < 1000 or unit == "s":
            break
    return f"{value:.{digits}f} {unit}"


def format_throughput(total: int, restored: int, seconds: float) -> str:
    """Throughput as shoal prints it: every result (restored ones included) per
    second of wall time, and, when some were restored, the computed ones too."""
    def per_second(n: int) -> str:
        return f"{n / seconds:,.1f} items/s" if seconds > 0 else "- items/s"

    if not restored:
        return per_second(total)
    return (f"{per_second(total)} ({restored:,} restored included; computed: "
            f"{per_second(total - restored)})")


class BatchReport(Generic[T]):
    """Everything about one finished (or interrupted) batch.

    The results are kept as the engine settled them (``Segment`` columns) and
    an ``ItemResult`` is made only when ``results`` (or ``failures``) is
    read: counts, ``values``, latency and errors come straight from the
    columns, so a report of a million tiny items costs about what ``map``
    does until somebody asks for the objects.

    Attributes:
        results: one ``ItemResult`` per finished item, in input order (built
            on first access).
        backend: the backend that ran the batch.
        backend_reason: why it was chosen (``backend="auto"`` explains its probe).
        workers: how many workers ran.
        wall_time: seconds from start to the last result.
        interrupted: True when Ctrl-C stopped the batch early.
        started_at: when the run started, in seconds since the epoch.
        settings: the run's options as given (name -> value), for reports.
    """

    def __init__(
        self,
        results: Sequence[ItemResult[T]] | None,
        backend: str,
        backend_reason: str,
        workers: int,
        wall_time: float,
        interrupted: bool = False,
        started_at: float = 0.0,
        settings: dict[str, Any] | None = None,
        *,
        segments: list[Segment] | None = None,
    ) -> None:
        if segments is None:
            items = list(results or [])
            segments = [Segment(0, len(items), results=items)] if items else []
        self._segments = segments
        self._results: list[ItemResult[T]] | None = None
        self.backend = backend
        self.backend_reason = backend_reason
        self.workers = workers
        self.wall_time = wall_time
        self.interrupted = interrupted
        self.started_at = started_at
        self.settings: dict[str, Any] = dict(settings or {})
        self._sorted_durations: list[float] | None = None

    def __repr__(self) -> str:
        return (f"BatchReport(total={self.total}, failed={self.failed}, backend={self.backend!r}, "
                f"wall_time={self.wall_time:.3f})")

    @property
    def results(self) -> list[ItemResult[T]]:
        """One ``ItemResult`` per finished item, in input order."""
        if self._results is None:
            self._results = [r for s in self._segments for r in s.item_results()]
        return self._results

    def _objects(self) -> list[ItemResult[T]]:
        """The ItemResults that exist already: those of segments with a failure,
        a retry or a restored item (the fast path's columns hold none)."""
        return [r for s in self._segments if s.results is not None for r in s.results]

    @property
    def values(self) -> list[T | None]:
        """Values of the successful items, in input order."""
        out: list[Any] = []
        for s in self._segments:
            if s.results is None:
                out.extend(s.values)
            else:
                out.extend(r.value for r in s.results if r.ok)
        return out

    @property
    def failures(self) -> list[ItemResult[T]]:
        """The failed items, in input order."""
        return [r for r in self._objects() if not r.ok]

    @property
    def total(self) -> int:
        return sum(s.count for s in self._segments)

    @property
    def failed(self) -> int:
        return sum(1 for r in self._objects() if not r.ok)

    @property
    def succeeded(self) -> int:
        return self.total - self.failed

    @property
    def restored(self) -> int:
        """How many results came from a checkpoint instead of a new run."""
        return sum(1 for r in self._objects() if r.restored)

    @property
    def throughput(self) -> float:
        """Items per second over the wall time (restored ones included)."""
        return self.total / self.wall_time if self.wall_time > 0 else math.inf

    def latency(self, q: float) -> float:
        """Percentile ``q`` (0-100) of per-item durations, in seconds (of
        items computed in this run, not restored ones)."""
        if self._sorted_durations is None:
            durations: list[float] = []
            for s in self._segments:
                if s.results is not None:
                    durations.extend(r.duration for r in s.results if not r.restored)
                else:
                    durations.extend(s.durations or [s.per_item] * s.count)
            durations.sort()
            self._sorted_durations = durations
        return percentile(self._sorted_durations, q)

    @property
    def errors_by_type(self) -> dict[str, int]:
        """Failure counts keyed by exception type name, most common first (an
        exception known only as data, ``RemoteError``, counts under its own type's name)."""
        counts = Counter(error_type_name(r.error) for r in self.failures)
        return dict(counts.most_common())

    def raise_first(self) -> None:
        """Raise the first failure's exception, if any.

        Raises:
            BaseException: the first failed item's own exception.
        """
        for r in self.failures:
            r.unwrap()

    def to_dataframe(self) -> Any:
        """The results as a ``pandas.DataFrame``, one row per item, in input order.

        Columns: index, item, ok, value, error (the exception's type name and
        message), error_type, attempts, duration, worker, restored, started.
        ``value`` keeps the dtype of the successful values (a failed item's
        value is missing: integers become pandas' nullable ``Int64``).

        Raises:
            BackendUnavailable: pandas is missing: ``pip install "shoal[pandas]"``.
        """
        try:
            import pandas as pd
        except ImportError as exc:
            from shoal._core.errors import BackendUnavailable

            raise BackendUnavailable(
                'BatchReport.to_dataframe needs pandas: pip install "shoal[pandas]"') from exc
        rows = self.results
        ok_values = pd.Series([r.value for r in rows if r.ok])  # pandas infers their dtype
        if len(ok_values) == len(rows):
            values = ok_values
        else:  # the failed items' places are missing: a nullable dtype of the same kind
            nullable = {"i": "Int64", "u": "UInt64", "f": "Float64", "b": "boolean"}
            dtype = nullable.get(ok_values.dtype.kind, "object") if len(ok_values) else "object"
            values = pd.Series([r.value if r.ok else None for r in rows], dtype=dtype)
        return pd.DataFrame({
            "index": [r.index for r in rows],
            "item": pd.Series([r.item for r in rows], dtype=object),
            "ok": [r.ok for r in rows],
            "value": values,
            "error": [None if r.error is None else f"{error_type_name(r.error)}: {r.error}"
                      for r in rows],
            "error_type": [None if r.error is None else error_type_name(r.error) for r in rows],
            "attempts": [r.attempts for r in rows],
            "duration": [r.duration for r in rows],
            "worker": [r.worker for r in rows],
            "restored": [r.restored for r in rows],
            "started": [r.started for r in rows],
        })

    def summary(self) -> str:
        """A short human-readable report of the batch.

        Throughput counts every result, restored ones included (as
        ``throughput`` does), and then the computed ones alone; latency
        percentiles are of the items computed in this run.
        """
        lines = [
            f"items: {self.total} ({self.succeeded} ok, {self.failed} failed"
            + (f", {self.restored} restored from checkpoint" if self.restored else "")
            + ")" + (" [interrupted]" if self.interrupted else ""),
            f"backend: {self.backend} x{self.workers} ({self.backend_reason})",
            f"wall time: {format_seconds(self.wall_time)}, throughput: "
            + format_throughput(self.total, self.restored, self.wall_time),
        ]
        if self.total > self.restored:
            lines.append("latency per item: " + ", ".join(
                f"p{q} {format_seconds(self.latency(q))}" for q in (50, 95, 99)))
        if self.failed:
            by_type = ", ".join(f"{k}: {v}" for k, v in self.errors_by_type.items())
            lines.append(f"failures by type: {by_type}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained HTML report of this batch to ``path``; return the path.

        Charts of throughput, workers and latency, failures grouped by type,
        and the run's settings, in one file that opens offline.

        Raises:
            BackendUnavailable: matplotlib is missing: ``pip install "shoal[report]"``.
            OSError: the file cannot be written.
        """
        from shoal._report import write_html

        return write_html(self, path)

    def _repr_html_(self) -> str:
        # Jupyter's rich display: a compact summary, no charts and no heavy imports.
        from shoal._report import repr_html

        return repr_html(self)


def error_type_name(error: BaseException | None) -> str:
    """The name of an error's type; for an exception known only as data
    (``RemoteError``), the name of the type it stands for."""
    type_name = getattr(error, "type_name", None)
    if isinstance(type_name, str) and type(error).__name__ == "RemoteError":
        return type_name.rpartition(".")[2]
    return type(error).__name__
