"""The input of a run, pulled a chunk at a time and never under the engine's lock.

* A ``range``, ``list`` or ``tuple`` is sliced (``SliceSource``): a chunk of
  a range is a range, which costs nothing per item and pickles in a few bytes.
* Any other iterable is pulled with ``islice`` on the thread that asks
  (``IterSource``), which is the fastest way for a generator that is quick.
  A source whose ``next()`` blocks (a pipe, a socket, a queue) would hold the
  items already pulled for that chunk until it is full; so once a pull takes
  longer than ``STALL_SECONDS``, the rest of the input is read by a helper
  thread, one item at a time, into a small buffer, and a pull takes what has
  arrived without waiting. A record that arrives is then handed out at the
  next scheduling step, whatever the chunk size.

The engine guarantees one puller at a time, so a generator is never entered
from two threads at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

#: a pull that takes longer than this moves the input to a reader thread
STALL_SECONDS = 0.05
#: how long a pull from the reader thread waits for a full chunk
PATIENCE = 0.001


class Pulled(NamedTuple):
    """What one pull got: the items (maybe none yet), whether the input ended,
    and the exception that ended it, if the user's iterator raised (the items
    it gave before are kept)."""

    items: Sequence[Any]
    exhausted: bool
    error: BaseException | None = None


class Source:
    """Where a run's items come from (see the module docstring)."""

    def pull(self, n: int) -> Pulled:
        """Up to ``n`` items. Blocks only for an input that is not read by a
        reader thread yet."""
        raise NotImplementedError

    def use_reader(self) -> None:
        """Never block the thread that pulls (see ``IterSource.use_reader``)."""

    def close(self) -> None:
        """Stop reading (the run is over)."""


class SliceSource(Source):
    """A range, list or tuple: chunks are slices."""

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = items
        self._next = 0

    def pull(self, n: int) -> Pulled:
        start = self._next
        chunk = self._items[start : start + n]
        self._next = start + len(chunk)
        return Pulled(chunk, self._next >= len(self._items))


class IterSource(Source):
    """Any other iterable (see the module docstring).

    ``on_ready`` is called from the reader thread when items arrive while
    nothing was buffered, so that a worker waiting for input asks again.
    """

    def __init__(self, items: Iterable[Any], on_ready: Callable[[], None]) -> None:
        self._it: Iterator[Any] = iter(items)
        self._on_ready = on_ready
        self._reader: _Reader | None = None

    def pull(self, n: int) -> Pulled:
        if self._reader is not None:
            return self._reader.take(n)
        t0 = time.monotonic()
        chunk: list[Any] = []
        try:
            chunk.extend(itertools.islice(self._it, n))  # keeps what came before a raise
        except Exception as exc:
            return Pulled(chunk, True, exc)
        if len(chunk) < n:
            return Pulled(chunk, True)
        if time.monotonic() - t0 > STALL_SECONDS:
            self._reader = _Reader(self._it, self._on_ready)
        return Pulled(chunk, False)

    def use_reader(self) -> None:
        """Read through a reader thread from now on (for a backend whose one
        dispatching thread also handles results: a blocking ``next()`` there
        would hold finished results back)."""
        if self._reader is None:
            self._reader = _Reader(self._it, self._on_ready)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()


class _Reader:
    """A daemon thread that reads a slow iterator one item at a time.

    It reads only what the engine asked for and has not received yet
    (``_want``): the engine asks only when it has room, so the items between
    the input and the caller stay within ``max_in_flight``.

    ``_cond`` guards ``_buf``, ``_done``, ``_error``, ``_want`` and
    ``_stopped``. The thread may sit in ``next()`` forever (a pipe nobody
    writes to): it is a daemon, and ``stop()`` does not wait for it.
    """

    def __init__(self, it: Iterator[Any], on_ready: Callable[[], None]) -> None:
        self._it = it
        self._on_ready = on_ready
        self._cond = threading.Condition()
        self._buf: deque[Any] = deque()
        self._done = False
        self._error: Exception | None = None
        self._want = 0  # items asked for and not yet handed over
        self._stopped = False
        threading.Thread(target=self._run, name="shoal-input", daemon=True).start()

    def _run(self) -> None:
        it = self._it
        cond, buf = self._cond, self._buf
        while True:
            with cond:
                while len(buf) >= self._want and not self._stopped:
                    cond.wait()
                if self._stopped:
                    return
            try:
                item = next(it)
            except StopIteration:
                self._finish(None)
                return
            except Exception as exc:  # raised once the items before it are delivered
                self._finish(exc)
                return
            with cond:
                if self._stopped:
                    return
                buf.append(item)
                size = len(buf)
                if size >= self._want:
                    cond.notify_all()  # a take() may be waiting for a full chunk
            if size == 1:
                self._on_ready()

    def _finish(self, error: Exception | None) -> None:
        with self._cond:
            self._done = True
            self._error = error
            self._cond.notify_all()
        self._on_ready()

    def take(self, n: int) -> Pulled:
        """Up to ``n`` items: what has arrived, after waiting at most
        ``PATIENCE`` for a full chunk (a fast input then still gives full
        chunks; a slow one costs a pull that long)."""
        with self._cond:
            buf = self._buf
            self._want = n
            self._cond.notify_all()
            if len(buf) < n and not self._done:
                self._cond.wait_for(lambda: len(buf) >= n or self._done or self._stopped,
                                    PATIENCE)
            chunk = [buf.popleft() for _ in range(min(n, len(buf)))]
            self._want = n - len(chunk)  # keep reading what was asked for
            ended = self._done and not buf
            error = self._error if ended else None
        return Pulled(chunk, ended, error)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
