"""Progress reporting: a tqdm bar, plain log lines, or a user callback.

The engine calls ``make_progress(progress, total_hint)`` once per run and
registers the returned ``RunObserver``. The observers here share one tally and
one ``RateEstimator``, so bar, log line and callback agree on rate and ETA.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from shoal._core.errors import InvalidOptionError
from shoal._core.results import BatchReport, ItemResult
from shoal._sinks.base import RunInfo, RunObserver

__all__ = [
    "CallbackProgress", "LineProgress", "ProgressEvent", "RateEstimator", "TqdmProgress",
    "make_progress",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A snapshot of a run's progress.

    ``done``/``ok``/``failed`` include ``restored`` (results from a checkpoint);
    ``rate`` (items/s, recent moving average) excludes them; ``eta`` is seconds
    left, None when ``total`` is None or the rate is 0; ``elapsed`` is seconds
    since the run started.
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
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])
        self._count = 0

    def add(self, n: int, now: float) -> None:
        """Record ``n`` items completed at time ``now`` (non-decreasing)."""
        self._count += n
        if now - self._samples[-1][0] >= self._resolution:
            self._samples.append((now, self._count))
            self._trim(now)

    def rate(self, now: float) -> float:
        """Items per second from the window's base checkpoint up to ``now``."""
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
    parts.append(f"{event.rate:.1f} items/s")
    if not final and event.total is not None:
        parts.append("ETA " + ("?" if event.eta is None else format_duration(event.eta)))
    return parts


def format_line(event: ProgressEvent, *, prefix: str = "shoal", final: bool = False) -> str:
    """One plain line, e.g. ``shoal: 620/1000 (62%) ok=618 failed=2 8.4 items/s ETA 0:00:45``."""
    if event.total is None:
        head = f"{prefix}: {event.done}"
    else:
        # Floor, so 999/1000 never claims 100%.
        pct = 100 if event.total <= 0 else min(event.done * 100 // event.total, 100)
        head = f"{prefix}: {event.done}/{event.total} ({pct}%)"
    tail = [f"done in {format_duration(event.elapsed)}"] if final else []
    return " ".join([head, *_stats(event, final), *tail])


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
        self._reset(None)

    def _reset(self, info: RunInfo | None) -> None:
        now = self._clock()
        self.total = info.total if info is not None and info.total is not None else self._total_hint
        self.ok = self.failed = self.restored = 0
        self._started_at = now
        # Unless draw_first, the throttle window opens at the run start, so a
        # short run shows only its final state.
        self._last_draw = -math.inf if self._draw_first else now
        self._estimator.reset(now)

    def on_start(self, info: RunInfo) -> None:
        """Reset the counts (an observer may be reused) and learn the total."""
        self._reset(info)
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
        """Show the final state once, whatever the throttle says."""
        self._show(self.event(), report, final=True)

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
    """Writes a plain line every ``interval`` s and one at the end: for logs, CI, pipes."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 5.0, total: int | None = None,
        clock: Clock = time.monotonic, prefix: str = "shoal",
    ) -> None:
        """Write to ``stream`` (default: ``sys.stderr``, looked up at each write).

        Raises:
            InvalidOptionError: ``interval`` is negative or not finite.
        """
        self._stream, self._prefix, self._broken = stream, prefix, False
        super().__init__(total=total, clock=clock, min_interval=interval)

    def _started(self) -> None:
        self._broken = False

    def _show(self, event: ProgressEvent, report: BatchReport[Any] | None, final: bool) -> None:
        if self._broken:
            return
        line = format_line(event, prefix=self._prefix, final=final)
        if report is not None and report.interrupted:
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
    """

    _BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
    _NO_TOTAL = "{desc}: {n_fmt} [{elapsed}{postfix}]"

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
    "True (bar or log lines, by environment), False/None (off), "
    "a callable taking a ProgressEvent, or a RunObserver instance"
)


def make_progress(
    progress: object, total_hint: int | None = None, *,
    clock: Clock = time.monotonic, stream: TextIO | None = None,
) -> RunObserver | None:
    """Turn the user's ``progress=`` option into a RunObserver, or None for off.

    ``True`` picks a tqdm bar in a terminal or notebook kernel and
    ``LineProgress`` elsewhere (CI, logs, pipes). ``total_hint`` is the total
    when the run's ``RunInfo.total`` is None.

    Raises:
        InvalidOptionError: ``progress`` is none of the accepted forms, or
            ``total_hint`` is not a non-negative int.
    """
    if total_hint is not None and (
        isinstance(total_hint, bool) or not isinstance(total_hint, int) or total_hint < 0
    ):
        raise InvalidOptionError(f"total must be a non-negative int or None, got {total_hint!r}")
    if progress is None or progress is False:
        return None
    if progress is True:
        if _in_jupyter_kernel() or _is_tty(sys.stderr if stream is None else stream):
            try:
                import tqdm.auto  # noqa: F401  (probe; the bar is made on start)
            except ImportError:
                pass  # a dependency, but a broken install should still log lines
            else:
                return TqdmProgress(stream, total=total_hint, clock=clock)
        return LineProgress(stream, total=total_hint, clock=clock)
    if isinstance(progress, type):
        # A class passes the structural checks below yet cannot be called as
        # an observer; name the likely mistake instead of failing mid-run.
        raise InvalidOptionError(
            f"progress={progress.__name__} is a class; pass an instance. Accepted: {_ACCEPTED}"
        )
    if isinstance(progress, RunObserver):
        return progress
    if callable(progress):
        return CallbackProgress(progress, total=total_hint, clock=clock)
    raise InvalidOptionError(f"invalid progress={progress!r}; accepted: {_ACCEPTED}")
