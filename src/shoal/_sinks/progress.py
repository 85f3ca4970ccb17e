"""Progress reporting: a tqdm bar, plain lines (stderr or ``logging``), or a user callback.

The engine calls ``make_progress(progress, total_hint)`` once per run, as it
sets the run up, and registers the returned ``RunObserver``. The observers
here share one tally and one ``RateEstimator``, so bar, line and callback
agree on rate and ETA.

Two numbers, each with one meaning wherever shoal prints it:

* **rate** (``ProgressEvent.rate``, the live ``items/s``): items *computed*
  per second over the last 10 s; restored items are left out, because the
  ETA must be the pace of the work still to do;
* **throughput** (the final line, ``BatchReport.throughput``, every summary):
  every result, restored ones included, per second of the run's wall time.

Times print in one format (``format_seconds``: ``15.0 ms``, ``1.16 s``,
``0:02:05``); the final line and ``BatchReport.summary()`` show the same
wall time. ETAs print as ``H:MM:SS``, rounded up.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from shoal._core.errors import InvalidOptionError
from shoal._core.results import BatchReport, ItemResult, format_seconds
from shoal._sinks.base import RunInfo, RunObserver

__all__ = [
    "LOGGER", "CallbackProgress", "LineProgress", "ProgressEvent", "RateEstimator",
    "TqdmProgress", "make_progress",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A snapshot of a run's progress.

    ``done``/``ok``/``failed`` include ``restored`` (results from a checkpoint);
    ``rate`` (items/s computed over the last 10 s) excludes them; ``eta`` is
    seconds left, None when ``total`` is None or the rate is not known yet;
    ``elapsed`` is seconds since the run started (in the final event of
    ``shoal.run``, the report's ``wall_time``).
    """

    done: int
    total: int | None
    ok: int
    failed: int
    restored: int
    rate: float
    eta: float | None
    elapsed: float


class RateEstimator:
    """Throughput over a sliding time window; pure (timestamps are passed in).

    Why a time window rather than an EWMA over updates: results arrive in
    batches of irregular size at irregular gaps (thousands of tiny batches a
    second, then a stall on a slow chunk). An EWMA weights each *call* equally,
    so it depends on how the engine happens to batch, and its per-call rates
    (n / dt with dt ~ 0) are wild. Counting items over the last ``window``
    seconds averages a fixed span of wall time whatever the call pattern, so
    the ETA is stable yet follows a real change of speed within ``window`` s.
    ``rate(now)`` measures up to ``now``, so a stall decays the rate and grows
    the ETA instead of freezing the last good value.

    The first batch opens the measurement instead of counting in it: it may
    hold work done before the clock started (the ``auto`` backend runs up to
    16 items inline before the run's observers start, and all of them arrive
    in one batch an instant later: counted over that instant, 16 items of
    3 ms read as 5,000 items/s) and it carries the start-up of the workers.
    The window then measures from that batch's arrival. Until a second batch
    arrives, the rate is what finished over the time since ``reset``: the
    only measure there is, and one that decays if nothing follows.
    """

    def __init__(self, window: float = 10.0) -> None:
        """Average over the last ``window`` seconds.

        Raises:
            InvalidOptionError: ``window`` is not a positive finite number.
        """
        if not (window > 0 and math.isfinite(window)):
            raise InvalidOptionError(f"rate window must be a positive number, got {window!r}")
        self.window = window
        # Checkpoints at most every window/32 s (calls in between only move the
        # live count): memory stays ~33 entries at any call frequency.
        self._resolution = window / 32
        self.reset(0.0)

    def reset(self, now: float) -> None:
        """Start measuring at ``now`` with nothing counted."""
        self._origin = now
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])
        self._count = 0
        self._opened = False  # the first batch has arrived (and became the base)
        self._measuring = False  # items have arrived since it

    def add(self, n: int, now: float) -> None:
        """Record ``n`` items completed at time ``now`` (non-decreasing)."""
        self._count += n
        if n > 0 and not self._opened:
            self._opened = True
            self._samples = deque([(now, self._count)])
            return
        self._measuring = self._measuring or (n > 0)
        if now - self._samples[-1][0] >= self._resolution:
            self._samples.append((now, self._count))
            self._trim(now)

    def rate(self, now: float) -> float:
        """Items per second: over the window once measuring, else since ``reset``."""
        if not self._measuring:
            span = now - self._origin
            return self._count / span if span > 0 else 0.0
        self._trim(now)
        base_t, base_count = self._samples[0]
        span = now - base_t
        return (self._count - base_count) / span if span > 0 else 0.0

    def eta(self, remaining: int | None, now: float) -> float | None:
        """Seconds to finish ``remaining`` items at the current rate, or None."""
        if remaining is None:
            return None
        if remaining <= 0:
            return 0.0
        rate = self.rate(now)
        return remaining / rate if rate > 0 else None

    def _trim(self, now: float) -> None:
        # Keep the newest checkpoint at or before the window start as the base,
        # so the measured span covers the whole window once there is history.
        samples, cutoff = self._samples, now - self.window
        while len(samples) >= 2 and samples[1][0] <= cutoff:
            samples.popleft()


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, rounded up (an ETA of 0.2 s shows as 0:00:01, not 0:00:00)."""
    s = math.ceil(max(seconds, 0.0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _stats(event: ProgressEvent, final: bool) -> list[str]:
    parts = [f"ok={event.ok}", f"failed={event.failed}"]
    if event.restored:
        parts.append(f"restored={event.restored}")
    if final:
        # The same figures, in the same format, as BatchReport.summary().
        throughput = f"{event.done / event.elapsed:,.1f}" if event.elapsed > 0 else "-"
        parts.append(f"done in {format_seconds(event.elapsed)}, throughput {throughput} items/s")
    else:
        parts.append(f"{event.rate:,.1f} items/s")
        if event.total is not None:
            parts.append("ETA " + ("?" if event.eta is None else format_duration(event.eta)))
    return parts


def format_line(event: ProgressEvent, *, prefix: str = "shoal", final: bool = False) -> str:
    """One plain line, e.g. ``shoal: 620/1000 (62%) ok=618 failed=2 8.4 items/s ETA 0:00:45``.

    The final line (``final=True``) shows the wall time and the throughput
    instead of the live rate and the ETA. An empty ``prefix`` leaves out
    ``shoal:`` (a log record already names its logger).
    """
    if event.total is None:
        head = f"{event.done}"
    else:
        # Floor, so 999/1000 never claims 100%.
        pct = 100 if event.total <= 0 else min(event.done * 100 // event.total, 100)
        head = f"{event.done}/{event.total} ({pct}%)"
    if prefix:
        head = f"{prefix}: {head}"
    return " ".join([head, *_stats(event, final)])


class _TallyObserver:
    """Counting and throttling shared by all observers; ``_show`` displays."""

    def __init__(
        self, *, total: int | None, clock: Clock, min_interval: float, draw_first: bool = False
    ) -> None:
        if not (min_interval >= 0 and math.isfinite(min_interval)):
            raise InvalidOptionError(
                f"progress interval must be a number >= 0 seconds, got {min_interval!r}"
            )
        self._total_hint, self._clock, self._min_interval = total, clock, min_interval
        self._draw_first = draw_first
        self._estimator = RateEstimator()
        # When set, the next run is timed from here instead of from on_start
        # (make_progress: the run started before the auto probe, which runs
        # items before on_start).
        self._next_origin: float | None = None
        self.final: ProgressEvent | None = None  # the last run's final state
        self._reset(None, clock())

    def _reset(self, info: RunInfo | None, now: float) -> None:
        self.total = info.total if info is not None and info.total is not None else self._total_hint
        self.ok = self.failed = self.restored = 0
        self._started_at = now
        self.final = None
        # Unless draw_first, the throttle window opens at the run start, so a
        # short run shows only its final state.
        self._last_draw = -math.inf if self._draw_first else now
        self._estimator.reset(now)

    def _time_next_run_from(self, origin: float) -> None:
        """Count the next run's time from ``origin`` (a ``clock()`` reading)."""
        self._next_origin = origin

    def on_start(self, info: RunInfo) -> None:
        """Reset the counts (an observer may be reused) and learn the total."""
        origin, self._next_origin = self._next_origin, None
        self._reset(info, self._clock() if origin is None else origin)
        self._started()

    def on_results(self, results: Sequence[ItemResult[Any]]) -> None:
        """Count a batch; show it only if ``min_interval`` has passed (cheap otherwise)."""
        ok = restored = 0
        for r in results:
            ok += r.ok
            restored += r.restored
        self.ok += ok
        self.failed += len(results) - ok
        self.restored += restored
        now = self._clock()
        # Restored results arrive instantly from the checkpoint; counting them
        # as throughput would promise an ETA the real work cannot keep.
        self._estimator.add(len(results) - restored, now)
        if now - self._last_draw >= self._min_interval:
            self._last_draw = now
            self._show(self.event(now), None, final=False)

    def on_finish(self, report: BatchReport[Any] | None) -> None:
        """Show the final state once, whatever the throttle says.

        With a report, its ``wall_time`` is the elapsed time shown, so the
        final line and ``report.summary()`` agree to the digit.
        """
        event = self.event()
        if report is not None:
            event = dataclasses.replace(event, elapsed=report.wall_time)
        self.final = event
        self._show(event, report, final=True)

    def event(self, now: float | None = None) -> ProgressEvent:
        """The current progress as a ``ProgressEvent``."""
        now = self._clock() if now is None else now
        done = self.ok + self.failed
        remaining = None if self.total is None else self.total - done
        rate, eta = self._estimator.rate(now), self._estimator.eta(remaining, now)
        return ProgressEvent(
            done, self.total, self.ok, self.failed, self.restored, rate, eta, now - self._started_at
        )

    def _started(self) -> None:
        """Hook: a run started (counts already reset)."""

    def _show(self, event: ProgressEvent, report: BatchReport[Any] | None, final: bool) -> None:
        raise NotImplementedError


class LineProgress(_TallyObserver):
    """Writes a plain line every ``interval`` s and one at the end: for logs, CI, pipes.

    To a stream (``shoal: 620/1000 (62%) ok=618 ...``), or, given a
    ``logger``, as records of that logger (level INFO; WARNING for the final
    line of an interrupted run), so a service's handlers add timestamps.
    """

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 5.0, total: int | None = None,
        clock: Clock = time.monotonic, prefix: str = "shoal",
        logger: logging.Logger | None = None,
    ) -> None:
        """Write to ``stream`` (default: ``sys.stderr``, looked up at each write),
        or log to ``logger`` instead (then without ``prefix``: the record names
        its logger).

        Raises:
            InvalidOptionError: ``interval`` is negative or not finite, or both
                ``stream`` and ``logger`` are given.
        """
        if stream is not None and logger is not None:
            raise InvalidOptionError("LineProgress writes to a stream or a logger, not both")
        self._stream, self._prefix, self._broken = stream, prefix, False
        self._logger = logger
        super().__init__(total=total, clock=clock, min_interval=interval)

    def _started(self) -> None:
        self._broken = False

    def _show(self, event: ProgressEvent, report: BatchReport[Any] | None, final: bool) -> None:
        interrupted = report is not None and report.interrupted
        if self._logger is not None:
            line = format_line(event, prefix="", final=final)
            self._logger.log(logging.WARNING if interrupted else logging.INFO,
                             line + (" [interrupted]" if interrupted else ""))
            return
        if self._broken:
            return
        line = format_line(event, prefix=self._prefix, final=final)
        if interrupted:
            line += " [interrupted]"
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            # A closed pipe or file must not fail a batch that may have run
            # for hours: progress is cosmetic, so stop writing instead.
            self._broken = True


class CallbackProgress(_TallyObserver):
    """Calls ``callback(ProgressEvent)`` at most every ``min_interval`` s, and at the end."""

    def __init__(
        self, callback: Callable[[ProgressEvent], object], *, min_interval: float = 0.1,
        total: int | None = None, clock: Clock = time.monotonic,
    ) -> None:
        """Wrap ``callback``; exceptions it raises propagate to the engine.

        Raises:
            InvalidOptionError: ``min_interval`` is negative or not finite.
        """
        self._callback = callback
        # The first batch is delivered at once (a UI can show "started").
        super().__init__(total=total, clock=clock, min_interval=min_interval, draw_first=True)

    def _show(self, event: ProgressEvent, report: BatchReport[Any] | None, final: bool) -> None:
        self._callback(event)


class TqdmProgress(_TallyObserver):
    """A ``tqdm.auto`` bar (the widget in notebooks when ipywidgets exists).

    Rate and ETA come from ``RateEstimator`` and are shown in the postfix, not
    from tqdm's own smoothing, which would count restored items as throughput.
    tqdm's own elapsed time is left out too: its clock starts when the bar is
    made, after the auto probe, and its ``00:01`` format is not shoal's; the
    final state shows the run's wall time as the summary does.
    """

    # tqdm puts ", " before a non-empty postfix.
    _BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"
    _NO_TOTAL = "{desc}: {n_fmt}{postfix}"

    def __init__(
        self, stream: TextIO | None = None, *, total: int | None = None,
        clock: Clock = time.monotonic, min_interval: float = 0.1,
    ) -> None:
        """Draw on ``stream`` (default: ``sys.stderr``); the bar is made on start.

        Raises:
            InvalidOptionError: ``min_interval`` is negative or not finite.
        """
        self._stream = stream
        self._bar: Any = None  # tqdm is untyped
        super().__init__(total=total, clock=clock, min_interval=min_interval)

    def _started(self) -> None:
        from tqdm.auto import tqdm

        if self._bar is not None:
            self._bar.close()
        # We redraw under our own throttle (injected clock, ~10/s); a second,
        # real-time throttle in tqdm (mininterval) would only drop some redraws.
        self._bar = tqdm(
            total=self.total, desc="shoal", unit="item", dynamic_ncols=True, mininterval=0,
            file=self._stream if self._stream is not None else sys.stderr,
            bar_format=self._NO_TOTAL if self.total is None else self._BAR,
        )

    def _show(self, event: ProgressEvent, report: BatchReport[Any] | None, final: bool) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.n = event.done
        bar.set_postfix_str(", ".join(_stats(event, final)), refresh=not final)
        if final:
            if report is not None and report.interrupted:
                bar.set_description("shoal [interrupted]", refresh=False)
            bar.close()  # draws the final state once and ends the line
            self._bar = None


def _in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (Jupyter, VS Code, Colab)."""
    # Only look at already-imported modules: importing IPython just to ask
    # would cost ~0.5 s on every run outside notebooks.
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and hasattr(shell, "kernel")


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed file
        return False


_ACCEPTED = (
    "True (bar, log records or lines, by environment), False/None (off), "
    "a callable taking a ProgressEvent, or a RunObserver instance"
)

LOGGER = "shoal"


def _logging_shows_progress() -> bool:
    """True when the application configured logging that would show the
    ``shoal`` logger's INFO records (a handler on it or an ancestor)."""
    logger = logging.getLogger(LOGGER)
    # hasHandlers() ignores logging.lastResort, the WARNING-only fallback
    # Python uses when nothing is configured.
    return logger.hasHandlers() and logger.isEnabledFor(logging.INFO)


def make_progress(
    progress: object, total_hint: int | None = None, *,
    clock: Clock = time.monotonic, stream: TextIO | None = None,
) -> RunObserver | None:
    """Turn the user's ``progress=`` option into a RunObserver, or None for off.

    ``True`` picks, in this order: the widget bar in a notebook kernel; log
    records of the ``shoal`` logger when the application configured logging
    that shows its INFO records (``logging.basicConfig(level=logging.INFO)``,
    or a handler on ``shoal``); a tqdm bar on a terminal; else a plain line on
    stderr every 5 s (CI, pipes, services without logging). An explicit
    ``stream`` skips the logging choice. ``total_hint`` is the total when the
    run's ``RunInfo.total`` is None.

    The observers made here time their run from now: the engine calls this as
    it sets the run up, before the auto probe runs the first items, so those
    items count over the time they took.

    Raises:
        InvalidOptionError: ``progress`` is none of the accepted forms, or
            ``total_hint`` is not a non-negative int.
    """
    origin = clock()
    if total_hint is not None and (
        isinstance(total_hint, bool) or not isinstance(total_hint, int) or total_hint < 0
    ):
        raise InvalidOptionError(f"total must be a non-negative int or None, got {total_hint!r}")
    if progress is None or progress is False:
        return None
    observer: _TallyObserver
    if progress is True:
        observer = _default_observer(total_hint, clock, stream)
    elif isinstance(progress, type):
        # A class passes the structural checks below yet cannot be called as
        # an observer; name the likely mistake instead of failing mid-run.
        raise InvalidOptionError(
            f"progress={progress.__name__} is a class; pass an instance. Accepted: {_ACCEPTED}"
        )
    elif isinstance(progress, RunObserver):
        return progress  # the caller's object: timed from its on_start
    elif callable(progress):
        observer = CallbackProgress(progress, total=total_hint, clock=clock)
    else:
        raise InvalidOptionError(f"invalid progress={progress!r}; accepted: {_ACCEPTED}")
    observer._time_next_run_from(origin)
    return observer


def _default_observer(total_hint: int | None, clock: Clock, stream: TextIO | None
                      ) -> _TallyObserver:
    """What ``progress=True`` shows here (see ``make_progress``)."""
    in_kernel = _in_jupyter_kernel()
    if not in_kernel and stream is None and _logging_shows_progress():
        return LineProgress(total=total_hint, clock=clock, logger=logging.getLogger(LOGGER))
    if in_kernel or _is_tty(sys.stderr if stream is None else stream):
        try:
            import tqdm.auto  # noqa: F401  (probe; the bar is made on start)
        except ImportError:
            pass  # a dependency, but a broken install should still log lines
        else:
            return TqdmProgress(stream, total=total_hint, clock=clock)
    return LineProgress(stream, total=total_hint, clock=clock)
