"""How many items go to a worker at once: one policy for every backend.

A pure policy (no clock, no I/O): the engine feeds it what each finished part
of a task measured and asks for the size of the next chunk. Backends only
declare their parameters (``ChunkParams``: a thread hands over a chunk for
nothing, a process pays a pickle and a socket write, a Dask task a round trip
to the scheduler); the rules are written once, here, and so are the limits
that other options put on a chunk:

* a rate limit: a chunk never needs more tokens than the burst holds;
* a timeout on a backend that cannot report item by item: one item per
  chunk, so that a hung item is cut alone;
* ``max_in_flight``: a chunk fits the window, shared among the workers.

Why each rule exists:

* **failed items are not timing samples.** A bad record fails in
  microseconds; counted, it would make the next chunk swallow the input.
* **growth is bounded** (``growth``-fold per sample, but always allowed
  straight to ``min_seconds`` of work): first measurements are noisy.
* **guided** (with a known total): at least ``chunks_per_worker`` chunks per
  worker of what remains, so the last chunks finish together, but never
  chunks shorter than ``min_seconds``.
* **caps**: ``max_items`` shared among the workers (at least 1,024 each),
  because the window of items in flight grows with chunks x workers and must
  stay small in memory; ``max_bytes`` of pickle per chunk (a process worker's
  socket buffer), so neither side waits for the other to read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: smallest per-worker share of ``ChunkParams.max_items``
MIN_ITEMS_CAP = 1024


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """What a backend declares about handing items over (see the module docstring)."""

    target_seconds: float  # a chunk should compute for about this long
    min_seconds: float  # and, while the input lasts, for at least this long
    growth: float = 8.0  # at most this factor per sample (except straight to min_seconds)
    chunks_per_worker: int = 4  # guided, when the total is known
    max_items: int = 16384  # shared among the workers, at least MIN_ITEMS_CAP each
    max_bytes: int | None = None  # pickled bytes of one chunk, when items are pickled


class ChunkPolicy:
    """The size of the next chunk, from measured item time.

    ``fixed``: the caller's ``chunk_size`` (never changed, only checked against
    ``limit`` by the planner). ``params`` None: one item per chunk. ``limit``:
    the hard upper bound other options put on a chunk (rate burst, timeout,
    ``max_in_flight`` share); ``total``: items this run will still hand out,
    when known.
    """

    DECAY = 0.5  # weight of the past at each sample

    def __init__(self, params: ChunkParams | None, *, workers: int, total: int | None = None,
                 fixed: int | None = None, limit: int | None = None, start: int = 1) -> None:
        self.params = params
        self.workers = max(1, workers)
        self.total = total
        self.limit = limit
        self.fixed = fixed
        self._items = 0.0
        self._seconds = 0.0
        self.item_bytes = 0.0
        self.size = self._bounded(fixed if fixed is not None else start)

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and self.params is not None

    def _bounded(self, size: float) -> int:
        if self.limit is not None:
            size = min(size, self.limit)
        return max(1, int(size))

    def seed(self, per_item: float) -> None:
        """Start from a measured seconds-per-item (the auto probe's, or a pool's last
        run of the function), as one sample."""
        if self.adaptive and per_item > 0:
            self.observe(1, per_item, 0)

    def observe(self, items: int, seconds: float, pulled: int, item_bytes: float = 0.0) -> bool:
        """``items`` items that succeeded took ``seconds``; ``pulled``: items
        handed out so far. True when ``size`` changed."""
        if item_bytes > 0:
            self.item_bytes = item_bytes
        if not self.adaptive or items <= 0:
            return False
        params = self.params
        assert params is not None
        self._items = self._items * self.DECAY + items
        self._seconds = self._seconds * self.DECAY + seconds
        per_item = max(self._seconds / self._items, 1e-9)
        floor = params.min_seconds / per_item
        want = params.target_seconds / per_item
        if self.total is not None:
            remaining = max(self.total - pulled, 0)
            want = min(want, remaining / (params.chunks_per_worker * self.workers))
        want = min(max(want, floor, 1.0), max(self.size * params.growth, floor))
        want = min(want, max(MIN_ITEMS_CAP, params.max_items // self.workers))
        if params.max_bytes is not None and self.item_bytes > 0:
            want = min(want, params.max_bytes / self.item_bytes)
        new = self._bounded(math.floor(want + 0.5))
        if new == self.size or abs(new - self.size) < 0.2 * self.size:
            return False
        self.size = new
        return True
