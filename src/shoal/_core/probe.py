"""``backend="auto"``: run the first items on real workers, measure, choose.

The probe keeps every promise the backend it may choose keeps. Its first
item runs on a worker thread, timed with its CPU time, where a timeout is
enforced (the thread is abandoned). Tiny items then go on inline and work
that mostly waits goes to threads: neither isolates a crash, so nothing is
lost by not having isolated the first item. CPU-bound work of some size,
which processes may take, is probed further in one worker process, where a
crash costs one item; an item that crashes its worker there makes auto choose
processes. When ``fn`` cannot be pickled, or the machine has one CPU,
processes are out of the question and the whole probe runs on the thread.

The decisions are the pure functions of ``_policies/auto.py``, fed what the
engine measured of the items that succeeded. The probe items are real: their
results are kept.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

from shoal._backends import Backend, backend_class
from shoal._backends._base import cpu_count
from shoal._core import planner
from shoal._core.engine import Engine
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._policies.auto import (
    PROBE_MAX_ITEMS,
    PROBE_MAX_SECONDS,
    ProbeSample,
    choose_backend,
    probe_further_in_a_process,
)


class Probe:
    """The auto probe of one run: where it runs, when a phase is over, what it chose."""

    workers = 1

    def __init__(self, fn: Callable[[Any], Any], opts: Options, total: int | None) -> None:
        self.fn = fn
        self.opts = opts
        self.total = total
        self.note = ""
        self.candidates = _candidates(opts)
        self.parallel = "processes" in self.candidates  # before fn's pickling is tried
        # The first item runs on a thread, unless threads refuse these options.
        self.kind = "threads" if "threads" in self.candidates else "processes"
        if self.kind not in self.candidates:
            raise InvalidOptionError(
                f'backend="auto" cannot run these options: {_refusal(opts, self.kind)}')
        self.first = True  # the first phase: one item
        self.budget = 1
        self.started = time.monotonic()

    def due(self) -> float:
        """Seconds until the probe should end even if fewer items ran."""
        return max(0.0, self.started + PROBE_MAX_SECONDS - time.monotonic())

    def ready(self, engine: Engine) -> bool:
        """This phase is over: enough measured, and nothing is running any more."""
        reported = engine.attempts_ended
        wanted = 1 if self.first else PROBE_MAX_ITEMS
        if reported >= 1 and self.due() == 0:
            engine.limit(0)  # no new item for the probe's worker
        elif reported < wanted and not engine.exhausted:
            return False
        return not engine.busy

    def go_on(self, engine: Engine, make: Callable[[str], Backend]) -> Backend | str | None:
        """After the first item: where to probe the next ones.

        Returns None (decide now), the name of the kind to go on with (the
        current one: keep its worker), or a new backend to go on in (a
        process, made here with ``make`` because making it tells whether
        ``fn`` pickles).
        """
        if not self.first or engine.exhausted:
            return None
        self.first = False
        m = engine.measured
        sample = ProbeSample(m.items, m.wall, m.cpu if m.cpu_items == m.items else m.wall,
                             waited=m.waited)
        if m.items and not probe_further_in_a_process(sample):
            return None  # tiny, or mostly waiting: nothing more to learn that matters
        engine.limit(PROBE_MAX_ITEMS - engine.attempts_ended)
        if self.kind == "threads" and self.parallel and m.items:
            try:  # pickles fn: can it cross to a process at all?
                backend = make("processes")
            except Exception as exc:
                self.candidates.remove("processes")
                self.note = f"; but {exc}, so threads"
                return self.kind
            self.kind = "processes"
            return backend
        return self.kind

    def decide(self, engine: Engine) -> tuple[str, str]:
        """The chosen backend and why, from what the engine measured."""
        if engine.crashes and "processes" in self.candidates:
            return "processes", ("auto: an item crashed its worker during the probe: processes "
                                 "keep each crash to one item")
        m = engine.measured
        remaining = None if self.total is None else max(0, self.total - engine.pulled)
        cpu = m.cpu if m.cpu_items == m.items else m.wall
        sample = ProbeSample(m.items, m.wall, cpu, engine.exhausted, remaining, m.waited)
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
        if name == "processes" and (cpu_count() < 2 or not hasattr(os, "fork")
                                    or importlib.util.find_spec(
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
