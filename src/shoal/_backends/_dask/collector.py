"""The Dask backend's collector: fetches what finished futures computed, never waiting unbounded.

One thread, so that the feeder never waits on the network. Dask calls
``watch``'s callback on its own thread when a future is done; the collector
looks at each such future's state once and:

* ``finished``: fetches its result (``client.gather``, all that finished
  together in one round trip, bounded by ``GATHER_TIMEOUT``) and unpickles
  it here, off Dask's event loop;
* ``pending`` or ``lost``: its result was lost with a worker and Dask
  computes it again; it is watched again (the part runs again, and no
  attempt is counted: the engine never hears of it);
* erred or cancelled: the feeder gets the error.

A finished future whose result could not be fetched in time is looked at
again (``FETCH_TRIES`` times in all) and then given to the feeder as
``unfetchable``: the feeder sends its part again. Everything fetched goes to
the feeder as messages: ``("fetched", [(future, reply, error, nbytes), ...])``
(``reply`` None when ``error`` is set) and ``("broken", exc)`` if the
collector itself fails.
"""

from __future__ import annotations

import queue
import threading
from asyncio import CancelledError as AsyncioCancelledError
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from shoal._backends._dask.client import gather

#: seconds one fetch of finished results may take before their states are looked at again
GATHER_TIMEOUT = 30.0
#: fetches of a finished future's result before its part is sent again
FETCH_TRIES = 3


class Unfetchable(Exception):
    """A finished future whose result could not be fetched (see ``FETCH_TRIES``)."""


class Collector:
    """Fetches and decodes finished futures for the feeder (see the module docstring).

    ``decode(blob)``: the reply in a fetched result (raises if it cannot be
    unpickled); ``deliver(message)``: hands a message to the feeder.
    """

    def __init__(self, client: Any, direct: bool | None, decode: Callable[[Any], Any],
                 deliver: Callable[[tuple[str, Any]], None]) -> None:
        self._client = client
        self._direct = direct
        self._decode = decode
        self._deliver = deliver
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()  # futures; None: stop
        self._tries: dict[Any, int] = {}  # key -> fetches that failed (collector thread only)
        self._thread = threading.Thread(target=self._run, name="shoal-dask-collector",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, future: Any) -> None:
        """Collect ``future`` once it is done (from any thread)."""
        future.add_done_callback(self._done.put)  # called on Dask's callback thread

    def stop(self, timeout: float) -> None:
        """Stop after what is queued; wait up to ``timeout`` s (a fetch under way
        ends within ``GATHER_TIMEOUT``, sooner once the client is closed)."""
        self._done.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                futures = [self._done.get()]
                while not self._done.empty():
                    futures.append(self._done.get())
                self._round([f for f in futures if f is not None])
                if None in futures:
                    return
        except BaseException as exc:  # the feeder must not wait for results forever
            self._deliver(("broken", exc))

    def _round(self, futures: list[Any]) -> None:
        fetched: list[tuple[Any, Any, BaseException | None, int]] = []
        finished = [f for f in futures if self._sort(f, fetched)]
        if finished:  # one round trip for all of them
            blobs = gather(self._client, finished, self._direct, GATHER_TIMEOUT)
            for f in finished:
                blob = blobs.get(f.key)
                if blob is None:
                    self._fetch_failed(f, fetched)
                    continue
                self._tries.pop(f.key, None)
                try:
                    fetched.append((f, self._decode(blob.blob), None, len(blob.blob)))
                except Exception as exc:  # e.g. a class the driver cannot import
                    fetched.append((f, None, exc, 0))
        if fetched:
            self._deliver(("fetched", fetched))

    def _sort(self, future: Any, fetched: list[tuple[Any, Any, BaseException | None, int]],
              ) -> bool:
        """True if ``future`` finished; otherwise deal with it (watch it, or its error)."""
        status = future.status  # read once: it may change while we look
        if status == "finished":
            return True
        if status in ("pending", "lost"):
            self.watch(future)  # computed again after its worker died: fetch it then
        else:
            fetched.append((future, None, future_error(future), 0))
        return False

    def _fetch_failed(self, future: Any,
                      fetched: list[tuple[Any, Any, BaseException | None, int]]) -> None:
        if not self._sort(future, fetched):
            return  # no longer finished: watched again, or erred
        tries = self._tries[future.key] = self._tries.get(future.key, 0) + 1
        if tries < FETCH_TRIES:
            self._done.put(future)  # in the next round
            return
        del self._tries[future.key]
        fetched.append((future, None, Unfetchable(
            f"the result of Dask task {future.key} could not be fetched {tries} times, "
            f"each within {GATHER_TIMEOUT:g} s"), 0))


def future_error(future: Any) -> BaseException:
    """The exception of an erred or cancelled future."""
    if future.status == "cancelled":  # let go of, most often: ask nobody (the client may be closed)
        return CancelledError(f"Dask future {future.key} was cancelled")
    try:
        exc = future.exception(timeout=GATHER_TIMEOUT)
    except (CancelledError, AsyncioCancelledError) as cancelled:
        return cancelled
    except TimeoutError as timeout:
        return timeout
    if exc is None:  # "cancelled" or "lost" without a stored exception
        return CancelledError(f"Dask future {future.key} ended as {future.status!r}")
    return exc  # type: ignore[no-any-return]
