"""``backend="auto"``: run the first items on one worker, measure, choose.

The probe keeps every promise the backend it may choose keeps: its items run
on one worker of a real backend, so a timeout is enforced (the worker is
killed or abandoned) and, when processes are a candidate, a crash costs one
item instead of the caller's process. When ``fn`` cannot be pickled, or the
machine has one CPU, processes are out of the question and the probe runs on
one thread (timeouts still hold; nothing is isolated, as on the backend it
will choose).

The decision itself is the pure ``choose_backend`` (``_policies/auto.py``),
fed what the engine measured of the items that succeeded: wall time and the
CPU time of the thread that ran them. The probe items are real: their
results are kept.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from shoal._backends import backend_class
from shoal._backends._base import cpu_count
from shoal._core import planner
from shoal._core.engine import Engine
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._policies.auto import PROBE_MAX_ITEMS, PROBE_MAX_SECONDS, ProbeSample, choose_backend


class Probe:
    """The auto probe of one run: where it runs, when it is over, what it chose."""

    workers = 1
    budget = PROBE_MAX_ITEMS

    def __init__(self, fn: Callable[[Any], Any], opts: Options, total: int | None) -> None:
        self.opts = opts
        self.total = total
        self.note = ""
        self.candidates = _candidates(opts)
        self.parallel = "processes" in self.candidates  # before fn's pickling is tried
        self.kind = "threads"
        self.prebuilt: Any = None  # the probe's backend, when making it was the test
        if "processes" in self.candidates:
            self.kind = "processes"
            try:  # pickles fn: can it cross to a process at all?
                self.prebuilt = backend_class("processes")(fn, opts, self.workers)
            except Exception as exc:
                self.candidates.remove("processes")
                self.kind = "threads"
                self.note = f"; but {exc}, so threads"
        if self.kind not in self.candidates:
            raise InvalidOptionError(
                f"backend=\"auto\" cannot run these options: {_refusal(opts, self.kind)}")
        self.started = time.monotonic()

    def due(self) -> float:
        """Seconds until the probe should end even if fewer items ran."""
        return max(0.0, self.started + PROBE_MAX_SECONDS - time.monotonic())

    def ready(self, engine: Engine) -> bool:
        """The probe is over: enough measured, and nothing is running any more."""
        reported = engine.items_run + engine.crashes
        if reported >= 1 and self.due() == 0:
            engine.limit(0)  # no new item for the probe's worker
        elif reported < PROBE_MAX_ITEMS and not engine.exhausted:
            return False
        return not engine.busy

    def decide(self, engine: Engine) -> tuple[str, str]:
        """The chosen backend and why, from what the engine measured."""
        if engine.crashes and "processes" in self.candidates:
            return "processes", ("auto: an item crashed its worker during the probe: processes "
                                 "keep each crash to one item")
        m = engine.measured
        remaining = None if self.total is None else max(0, self.total - engine.pulled)
        cpu = m.cpu if m.cpu_items == m.items else m.wall
        sample = ProbeSample(m.items, m.wall, cpu, engine.exhausted, remaining)
        name, why = choose_backend(False, sample, cpu_count(), self.parallel)
        if name == "processes" and name not in self.candidates:
            name, why = "threads", why + self.note  # fn cannot be pickled
        elif name not in self.candidates:  # sequential with a timeout: one thread can be left
            name, why = "threads", why + "; threads, so that the timeout can be enforced"
        return name, f"auto: {why}"


def _candidates(opts: Options) -> list[str]:
    """The backends auto may choose that accept these options."""
    found: list[str] = []
    for name in ("sequential", "threads", "processes"):
        if name == "sequential" and opts.timeout is not None:
            continue  # nothing could stop a hung item
        if name == "processes" and (cpu_count() < 2 or importlib.util.find_spec(
                "shoal._backends._processes.pool") is None):
            continue
        try:
            planner.check(opts, backend_class(name).traits)
        except InvalidOptionError:
            continue
        found.append(name)
    return found


def _refusal(opts: Options, name: str) -> str:
    try:
        planner.check(opts, backend_class(name).traits)
    except InvalidOptionError as exc:
        return str(exc)
    return "no backend accepts them"
