"""Chunk sizes for ``backend="processes"`` with ``chunk_size="auto"``.

A pure policy: the hub feeds it what each report took in the worker and asks
for the size of the next chunk. Why each bound exists is in the class docstring.
"""

from __future__ import annotations


class ChunkSizer:
    """Chunk sizes for ``chunk_size="auto"`` from measured item time.

    A pure policy (no clock, no I/O) fed the seconds each report took in the
    worker. From one item it aims at ``TARGET_SECONDS`` of work per chunk,
    growing at most ``GROWTH``-fold per report (first measurements are noisy)
    but always allowed straight to ``MIN_SECONDS`` of measured work, so tiny
    items reach full-size chunks in two reports. With a known total it keeps
    ``CHUNKS_PER_WORKER`` chunks per worker of what remains (guided: the last
    chunks finish together), never below ``MIN_SECONDS``. A chunk's pickle,
    in or out, stays under ``max_frame_bytes`` (the socket buffer), so neither
    side waits for the other to read.
    """

    TARGET_SECONDS = 0.02
    MIN_SECONDS = 0.002
    GROWTH = 8
    CHUNKS_PER_WORKER = 4
    DECAY = 0.5  # weight of the past at each report

    def __init__(self, workers: int, total: int | None, max_frame_bytes: int = 1 << 17) -> None:
        self.size = 1
        self._workers = workers
        self.total = total  # items this backend will be handed, when known
        self.max_frame_bytes = max_frame_bytes
        self._items = 0.0
        self._seconds = 0.0

    def observe(self, items: int, seconds: float, pulled: int, item_bytes: float = 0.0) -> bool:
        """Record that ``items`` items took ``seconds``; True when ``size`` changed.

        ``pulled``: how many of ``total`` the engine has handed out so far;
        ``item_bytes``: pickled bytes per item, of the larger of items and results.
        """
        if items <= 0:
            return False
        self._items = self._items * self.DECAY + items
        self._seconds = self._seconds * self.DECAY + seconds
        per_item = max(self._seconds / self._items, 1e-8)
        floor = self.MIN_SECONDS / per_item
        want = self.TARGET_SECONDS / per_item
        if self.total is not None:
            remaining = max(self.total - pulled, 0)
            want = min(want, remaining / (self.CHUNKS_PER_WORKER * self._workers))
        want = min(max(want, floor, 1.0), max(self.size * self.GROWTH, floor))
        if item_bytes > 0:
            want = min(want, self.max_frame_bytes / item_bytes)
        new = max(1, int(want + 0.5))
        if new == self.size or abs(new - self.size) < 0.2 * self.size:
            return False
        self.size = new
        return True
