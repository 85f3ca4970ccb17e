"""One pass over a report's results: the counts and columns every view draws.

Pure Python (``array`` columns, no numpy), so the notebook's ``_repr_html_``
costs no heavy import; the HTML report turns the columns into numpy arrays
without copying (``np.frombuffer``).

Restored items (from a checkpoint) count in the totals and in the failure
groups, but not in the timelines or the latency: their times belong to an
earlier run, as ``BatchReport.latency`` already decides.
"""

from __future__ import annotations

import reprlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shoal._core.errors import RemoteError
from shoal._core.results import ItemResult

EXAMPLES_PER_GROUP = 5
_SUMMARY_CHARS = 100

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def summarize_item(item: Any) -> str:
    """A short one-line repr of an item; huge containers cost no more than small ones."""
    try:
        text = _repr.repr(item)
    except Exception as exc:  # a broken __repr__ must not break the report
        text = f"<{type(item).__name__}: repr failed: {type(exc).__name__}>"
    return clip(text)


def clip(text: str, limit: int = _SUMMARY_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_type_name(err: BaseException | None) -> str:
    """The name failures are grouped by: the class name, or the original one a
    ``RemoteError`` stands in for (without its module)."""
    if isinstance(err, RemoteError):
        return err.type_name.rpartition(".")[2]
    return type(err).__name__


@dataclass
class FailureGroup:
    """Failures of one exception type: how many, a few examples, the first one."""

    type_name: str
    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)  # (index, item summary)
    first: ItemResult[Any] | None = None  # its traceback is formatted once, when shown


@dataclass
class RunData:
    """Counts over every result, and columns over the items run in this run.

    The columns are parallel: entry ``k`` of each describes one item that was
    run (not restored); ``position`` is its place in ``report.results``.
    """

    total: int = 0
    ok: int = 0
    failed: int = 0
    restored: int = 0
    retried: int = 0  # items run more than once
    retries: int = 0  # extra attempts, summed
    position: array[int] = field(default_factory=lambda: array("q"))
    index: array[int] = field(default_factory=lambda: array("q"))
    duration: array[float] = field(default_factory=lambda: array("d"))
    started: array[float] = field(default_factory=lambda: array("d"))
    worker: array[int] = field(default_factory=lambda: array("i"))  # code into worker_names
    outcome: array[int] = field(default_factory=lambda: array("b"))  # OK, RETRIED_OK, FAILED
    worker_names: list[str] = field(default_factory=list)
    failures: list[FailureGroup] = field(default_factory=list)  # most common first

    @property
    def ran(self) -> int:
        """How many items were run in this run (the length of the columns)."""
        return len(self.index)


OK, RETRIED_OK, FAILED = 0, 1, 2


def collect(results: Iterable[ItemResult[Any]]) -> RunData:
    """Walk ``results`` once and gather everything the report shows."""
    data = RunData()
    codes: dict[str, int] = {}
    groups: dict[str, FailureGroup] = {}
    # Bound methods hoisted out of the loop: this runs once per item, a million times.
    add_pos, add_index = data.position.append, data.index.append
    add_duration, add_started = data.duration.append, data.started.append
    add_worker, add_outcome = data.worker.append, data.outcome.append
    for pos, r in enumerate(results):
        data.total += 1
        if r.ok:
            data.ok += 1
        else:
            data.failed += 1
            name = error_type_name(r.error)
            group = groups.get(name)
            if group is None:
                group = groups[name] = FailureGroup(name, first=r)
            group.count += 1
            if len(group.examples) < EXAMPLES_PER_GROUP:
                group.examples.append((r.index, summarize_item(r.item)))
        if r.restored:
            data.restored += 1
            continue
        if r.attempts > 1:
            data.retried += 1
            data.retries += r.attempts - 1
        code = codes.get(r.worker)
        if code is None:
            code = codes[r.worker] = len(codes)
        add_pos(pos)
        add_index(r.index)
        add_duration(r.duration)
        add_started(r.started)
        add_worker(code)
        add_outcome(FAILED if not r.ok else RETRIED_OK if r.attempts > 1 else OK)
    data.worker_names = list(codes)
    data.failures = sorted(groups.values(), key=lambda g: (-g.count, g.type_name))
    return data
