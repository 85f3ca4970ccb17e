"""``shoal.worker_local``: an expensive object built once per worker, reached from ``fn``.

::

    @shoal.worker_local
    def model():                     # the factory: runs once per worker, on first use
        return load_model("big.bin")

    def score(row):
        return model().predict(row)  # this worker's model

    shoal.map(score, rows, backend="processes")

Why a handle and not a ``state=`` option handing the object to ``fn``:
``fn`` keeps its one-argument shape, so the same function runs under
``map``, ``starmap``, ``imap``, an ``Executor`` and a front-end's nodes, and
nothing in the engine or any backend has to know (each backend would
otherwise need a way to build the object on its workers and pass it along).
The object is built lazily, by the worker that first needs it, so a worker
that never runs an item builds nothing; to build it up front, pass the
handle as the ``initializer`` (``initializer=model``), which runs on each
worker before its first item.

"Per worker" is per thread of execution: a thread of the threads backend or
of a ``shoal.Pool`` (kept between the pool's calls), a worker process (one
thread), the caller's thread for sequential, one per event loop for
asyncio (every coroutine of a run shares it), one per thread of a Dask
worker. A recycled worker (``max_items_per_worker``) or one replaced after
a timeout builds a fresh one; a forked child never reuses its parent's.

The handle pickles by identity (a token and the factory), so a function that
uses it can be sent to a process or a Dask worker, also from ``__main__`` or
a notebook; every copy unpickled in one process shares one handle, hence one
object per thread there.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_tokens = itertools.count()
# Handles by token, so that every copy of a handle unpickled in a process is
# one handle there: those made here (weakly: they go when their maker drops
# them), and those received from another process (for the process's life: a
# worker may receive its function, and the handle, again with every run).
_made: weakref.WeakValueDictionary[str, WorkerLocal[Any]] = weakref.WeakValueDictionary()
_received: dict[str, WorkerLocal[Any]] = {}
_registry_lock = threading.Lock()


class WorkerLocal(Generic[T]):
    """A per-worker object: call the handle to get this worker's (see the module docstring)."""

    def __init__(self, factory: Callable[[], T], *, _token: str | None = None) -> None:
        if not callable(factory):
            from shoal._core.errors import InvalidOptionError

            raise InvalidOptionError(f"worker_local needs a factory to call, got {factory!r}")
        self.factory = factory
        # The pid makes tokens unique across the processes that make handles.
        self._token = _token or f"{os.getpid()}-{next(_tokens)}"
        self._local = threading.local()
        if _token is None:
            with _registry_lock:
                _made[self._token] = self

    def __call__(self) -> T:
        """This worker's object, built by the factory on first use.

        Raises:
            BaseException: whatever the factory raised (it runs again next time).
        """
        slot: tuple[int, T] | None = getattr(self._local, "slot", None)
        pid = os.getpid()
        if slot is None or slot[0] != pid:  # a forked child must not share its parent's
            slot = (pid, self.factory())
            self._local.slot = slot
        return slot[1]

    def clear(self) -> None:
        """Drop this worker's object (a closed connection): the next call builds another."""
        self._local.__dict__.pop("slot", None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._token, self.factory))

    def __repr__(self) -> str:
        return f"shoal.worker_local({getattr(self.factory, '__qualname__', self.factory)!r})"


def _restore(token: str, factory: Callable[[], Any]) -> WorkerLocal[Any]:
    with _registry_lock:
        handle = _made.get(token) or _received.get(token)
        if handle is None:
            handle = _received[token] = WorkerLocal(factory, _token=token)
    return handle


def worker_local(factory: Callable[[], T]) -> WorkerLocal[T]:
    """A handle to an object built once per worker: ``handle()`` in ``fn`` returns it.

    Use as a decorator on a factory defined at module level (or in a
    notebook cell)::

        @shoal.worker_local
        def db():
            return connect(DSN)

        def fetch(key):
            return db().get(key)

    Raises:
        InvalidOptionError: ``factory`` is not callable.
    """
    return WorkerLocal(factory)
