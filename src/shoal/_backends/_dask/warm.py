"""Warm Dask workers: one client, and without ``address=`` one LocalCluster, for many runs.

What a ``shoal.Pool(backend="dask")`` holds. ``DaskWorkers(options, workers)``
connects on the first run that needs it (on that run's feeder thread, so an
async caller's loop never waits for a cluster to start) and keeps the
connection until ``close``; each run is a ``DaskBackend`` served by it
(``serve``), which never closes it. Dask multiplexes runs: several may use
the same workers at once.

The initializer (``options.initializer``) belongs to the pool: it runs once
in each worker process for all the pool's runs (keyed by the pool's token),
and once in each process that runs isolated items.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from shoal._backends._base import WarmWorkers
from shoal._backends._dask.backend import DaskBackend
from shoal._backends._dask.client import Connection, connect, current_client, import_distributed
from shoal._backends._dask.settings import (
    TRAITS,
    check_main_guard,
    pickle_job,
    read_backend_options,
)
from shoal._core.errors import BrokenBackend
from shoal._core.options import Options


class DaskWorkers(WarmWorkers):
    """A Dask client (and the LocalCluster shoal starts) kept between runs.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
        InvalidOptionError: ``backend_options`` it does not understand.
        NotPicklable: the initializer cannot be pickled.
        BrokenBackend: a script would start a LocalCluster from top-level
            code that is not under ``if __name__ == "__main__":``.
    """

    traits = TRAITS

    def __init__(self, options: Options, workers: int | None = None) -> None:
        self._distributed = import_distributed()
        settings = read_backend_options(options)
        super().__init__(options)
        self.workers = workers or options.workers or DaskBackend.traits.default_workers()
        self.initializer = options.initializer
        self.initargs = options.initargs
        self.token = uuid.uuid4().hex[:12]
        pickle_job(_nothing, options.initializer, options.initargs, self.token)  # fail early
        self._given: Any = settings["client"]
        self._cluster_kwargs: Mapping[str, Any] = settings["cluster_kwargs"]
        # On the caller's thread, as DaskBackend does (see there).
        self._current: Any = (current_client(self._distributed)
                              if options.address and self._given is None else None)
        check_main_guard(options, self._given, self._cluster_kwargs)
        # _lock guards _connection and _closed: runs connect on their feeder threads.
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def connection(self) -> Connection:
        """The pool's connection, made on first use.

        Raises:
            BrokenBackend: the pool is closed, or the scheduler cannot be reached.
        """
        with self._lock:
            if self._closed:
                raise BrokenBackend("the Dask pool is closed; start another")
            if self._connection is None:
                self._connection = connect(self._distributed, self.options.address, self._given,
                                           self._current, self.workers, self._cluster_kwargs)
                # Garbage collection and interpreter exit close what it opened.
                self._finalizer = weakref.finalize(self, _close, self._connection)
            return self._connection

    def serve(self, fn: Callable[[Any], Any], options: Options, workers: int) -> DaskBackend:
        """A backend for one run of ``fn`` on this pool's client.

        Raises:
            NotPicklable: ``fn`` cannot be pickled to send it to the workers.
            InvalidOptionError: ``backend_options`` it does not understand.
        """
        return DaskBackend(fn, options, workers, warm=self)

    def close(self, cancel: bool = False) -> None:
        """Close the client and the LocalCluster the pool opened (a caller's client
        stays open); a run still using them fails."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()


def _close(connection: Connection) -> None:
    closer = connection.close()
    if closer is not None:
        closer.join()


def _nothing(item: Any) -> None:
    return None
