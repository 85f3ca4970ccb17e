"""Chunk sizes for the Dask backend's ``chunk_size="auto"``, from measurements.

Pure: no Dask, no clock. The feeder asks ``ChunkPlan.size`` before each task
(and ``budget`` for its time limit) and reports what tasks measured
(``took``) and how big their items pickled (``pickled``).
"""

from __future__ import annotations

import math

#: chunk_size="auto": a task should compute for about this long ...
TARGET_TASK_SECONDS = 0.1
#: ... and, while the input lasts, for at least this long: a task costs about
#: as much whatever it holds (a few ms of CPU on the driver and as much on the
#: worker: scheduling, messages, pickles; and a round trip of tens of ms)
MIN_TASK_SECONDS = 0.05
#: when the input's length is known, at least this many tasks per worker
#: thread (so the last ones balance), unless they would be shorter than
#: MIN_TASK_SECONDS
TASKS_PER_THREAD = 4
#: the most pickled bytes of items a chunk grows to (Dask warns of task
#: graphs over 10 MB; the scheduler holds the items of every task in flight)
MAX_TASK_BYTES = 4_000_000
#: the most items a chunk grows to (the driver holds up to four chunks per thread)
MAX_AUTO_CHUNK = 250_000
#: the first task of each worker thread holds at most this many items ...
PROBE_ITEMS = 64
#: ... and stops after the first item that ends this long after it started:
#: tiny items are timed over dozens of them, not one (whose time is mostly
#: fixed costs), while a slow first item still comes back alone
PROBE_SECONDS = 0.002


class ChunkPlan:
    """Chunk sizes for ``chunk_size="auto"`` from what the tasks measured.

    Until the first reply the feeder keeps one task per thread (``probing``),
    each a time-boxed probe: up to ``PROBE_ITEMS`` items (fewer for a short
    input), of which the worker runs the first, then more only until
    ``PROBE_SECONDS`` have passed, and sends back those it ran. One round
    trip so times a tiny function over dozens of items (within about 1.5x of
    its cost in a long loop; one item would mostly time fixed costs, and a
    second round trip to the cluster, tens of ms, would pass before chunks
    flow), while an item that may take an hour still runs alone: the items
    it held back wait for it (the price of the one round trip saved), then
    are sent again in planned chunks.

    Then, when the input's length is known, what remains is cut into equal
    chunks, as many as a multiple of the worker threads (so they finish
    together): up to ``TASKS_PER_THREAD`` per thread, fewer rather than tasks
    shorter than ``MIN_TASK_SECONDS``, more rather than longer than
    ``TARGET_TASK_SECONDS``. Without a length, a chunk computes for
    ``TARGET_TASK_SECONDS``. Either way a chunk stays under
    ``MAX_TASK_BYTES`` and ``MAX_AUTO_CHUNK`` items, and the cut is redone
    only when the time per item drifts twofold.

    Seconds and bytes per item are averages weighted by item count, halved at
    each new sample: one big chunk outweighs the probes, and the estimate
    follows a drift.
    """

    def __init__(self, threads: int, total: int | None) -> None:
        self.threads = threads
        self.total = total
        self._items = self._seconds = 0.0  # decayed sums of measured items and time
        self._sent = self._bytes = 0.0  # decayed sums of pickled items and bytes
        self._cut: tuple[float, int] | None = None  # (seconds per item, chunk) of the last cut

    @property
    def measured(self) -> bool:
        return self._items > 0

    @property
    def probing(self) -> bool:
        return not self.measured

    def took(self, items: int, seconds: float) -> None:
        if items:
            self._items = self._items / 2 + items
            self._seconds = self._seconds / 2 + seconds

    def pickled(self, items: int, nbytes: int) -> None:
        if items:
            self._sent = self._sent / 2 + items
            self._bytes = self._bytes / 2 + nbytes

    def budget(self) -> float | None:
        """Seconds after which the next task stops, if it is a probe."""
        return PROBE_SECONDS if self.probing else None

    def size(self, pulled: int) -> int:
        """Items for the next task, ``pulled`` items of the input being taken already."""
        if not self.measured:
            if self.total is None:
                return PROBE_ITEMS
            # A short input is not held back by the probes: each holds at most
            # its share of the tasks the input would be cut into.
            share = (self.total - pulled) // (TASKS_PER_THREAD * self.threads)
            return max(1, min(PROBE_ITEMS, share))
        per_item = max(self._seconds / self._items, 1e-9)
        if self._cut is not None and 0.5 <= per_item / self._cut[0] <= 2:
            return self._cut[1]
        limit = min(TARGET_TASK_SECONDS / per_item, MAX_AUTO_CHUNK)
        if self._bytes:
            limit = min(limit, MAX_TASK_BYTES * self._sent / self._bytes)
        limit = max(1, math.floor(limit))
        size = limit
        if self.total is not None:
            left = max(1, self.total - pulled)
            tasks = min(left * per_item / MIN_TASK_SECONDS, TASKS_PER_THREAD * self.threads)
            tasks = max(math.floor(tasks), math.ceil(left / limit), 1)
            size = math.ceil(left / (self.threads * math.ceil(tasks / self.threads)))
        self._cut = (per_item, size)
        return size
