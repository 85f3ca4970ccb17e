"""What the Dask backend's feeder has in flight: the engine's tasks and their futures.

Only the feeder thread touches it. An engine task in flight is a ``Record``;
each Dask future is a ``Part`` of one record (items ``offset .. offset+count-1``
of its task: a task goes out whole, but the items a probe did not reach go
out again as several parts), or an ``Isolated`` batch of isolated one-item
records. Parts finish in any order; ``report`` gives the engine each
record's outcomes in index order, as ``Engine.complete`` wants them.
Letting go of a future (``release``) needs no round trip: the scheduler
drops a task nobody wants.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal._core.calling import Outcome

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task


@dataclass(slots=True, eq=False)
class Record:
    """An engine task in flight, as one or more parts reported in index order."""

    task: Task
    parts: int = 0  # parts not yet finished
    next: int = 0  # offset of the first item not yet reported to the engine
    ready: dict[int, Outcome] = field(default_factory=dict)  # out of order, by offset

    @property
    def index(self) -> int:
        """The input index of the first item not yet reported."""
        return self.task.start + self.next


@dataclass(slots=True, eq=False)
class Part:
    """One Dask future of ``run_part``: items ``offset .. offset+count-1`` of a record's task."""

    record: Record
    offset: int
    count: int
    future: Any = None
    nbytes: int = 0  # of the pickled items
    resent: int = 0  # times sent again because its result could not be fetched


@dataclass(slots=True, eq=False)
class Isolated:
    """One Dask future of ``run_isolated``: isolated one-item records, run in turn."""

    records: list[Record]
    future: Any = None
    resent: int = 0


class InFlight:
    """The feeder's records, parts and pending pieces (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.parts: dict[Any, Part | Isolated] = {}  # future key -> part
        # Items a probe did not reach, as (record, offset, count): sent before new tasks.
        self.pending: deque[tuple[Record, int, int]] = deque()
        self._records: dict[int, Record] = {}  # task seq -> record

    def track(self, task: Task) -> Record:
        """``task`` was acquired from the engine."""
        record = self._records[task.seq] = Record(task, next=task.done)
        return record

    def add(self, part: Part | Isolated) -> None:
        self.parts[part.future.key] = part
        if isinstance(part, Part):
            part.record.parts += 1

    def report(self, part: Part, outcome: Outcome) -> None:
        """``part`` ended with ``outcome``: give the engine every outcome of its
        record that is next in order."""
        record, task = part.record, part.record.task
        record.parts -= 1
        record.ready[part.offset] = outcome
        while record.next in record.ready:
            done = record.ready.pop(record.next)
            record.next += len(done.values)
            self.engine.complete(task, done)
            if done.stopped:  # all_or_nothing: the engine took the task back
                self.discard(record)
                return
        if record.parts == 0 and record.next >= len(task.items):
            self.forget(record)

    def finish(self, record: Record, outcome: Outcome) -> None:
        """An isolated record's one outcome."""
        self.forget(record)
        self.engine.complete(record.task, outcome)

    def forget(self, record: Record) -> None:
        self._records.pop(record.task.seq, None)

    def discard(self, record: Record) -> None:
        """Let go of everything of ``record`` still out: its parts, its pending pieces."""
        self.forget(record)
        self.pending = deque(p for p in self.pending if p[0] is not record)
        for key, part in list(self.parts.items()):
            if isinstance(part, Part) and part.record is record:
                del self.parts[key]
                part.future.release()

    def drop(self, task: Task) -> None:
        """The engine gave up on ``task`` (timeout): let go of what still runs it.

        An isolated batch runs on for its other items (the engine ignores
        what comes of a task it gave up on); one of its own is let go of,
        and the worker kills the item's process.
        """
        record = self._records.get(task.seq)
        if record is None:
            return
        self.discard(record)
        for key, part in list(self.parts.items()):
            if isinstance(part, Isolated) and part.records == [record]:
                del self.parts[key]
                part.future.release()

    def clear(self) -> None:
        """Let go of every future (the run is over)."""
        for part in self.parts.values():
            part.future.release()
        self.parts.clear()
        self.pending.clear()
        self._records.clear()
