"""The Dask backend's worker side: the task function and what it carries.

Everything that crosses the cluster is bytes shoal pickled itself, wrapped in
``Pickled``: the job (``fn``, the initializer, its arguments and the token it
runs once per worker for; one blob per run), each chunk of items, and each
reply. Dask moves them as out-of-band
frames, untouched: its scheduler unpickles task arguments and would walk plain
lists item by item (seconds for 100,000 items), and a reply pickled by Dask
would be unpickled on the driver's Dask event loop; as bytes, the driver
unpickles it on shoal's collector thread instead, and a value that cannot be
pickled fails its item alone.

``fn`` travels inside every task but is unpickled once per worker process
(``load_job``, cached by the run's token). A scattered copy would tie every
task to the workers holding it (Dask places tasks next to their data) and be
lost for good when those workers died.

This module is imported by name on the workers (and on the scheduler, which
unpickles task specs): keep it free of driver-only imports.
"""

from __future__ import annotations

import marshal
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

from shoal._core import wire
from shoal._core.calling import run_chunk, sync_caller
from shoal._core.wire import CarriedError, carried


class Pickled:
    """Bytes pickled by shoal, opaque to Dask; ``token`` names a run's job.

    Dask pickles with protocol 5 and sends ``PickleBuffer`` contents as
    separate frames: the blob is never copied into a pickle stream, and the
    receiving side (scheduler or worker) gets a view of the received frame.
    """

    __slots__ = ("blob", "token")

    def __init__(self, blob: bytes | memoryview, token: str = "") -> None:
        self.blob = blob
        self.token = token

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        blob = pickle.PickleBuffer(self.blob) if int(protocol) >= 5 else bytes(self.blob)
        return Pickled, (blob, self.token)


@dataclass(slots=True)
class Reply:
    """What a task sends back: ``Outcome`` fields, errors as ``CarriedError``.

    On the wire, values of builtin types only travel as ``marshalled`` (see
    ``_pack``) and ``values`` is empty; ``unpack`` puts them back. A chunk the
    worker could not unpickle comes back as ``unreadable`` (no item ran): the
    driver cannot tell which item is to blame, so the engine's crash-isolation
    rule decides. ``stopped``: all_or_nothing stopped the chunk at a failure.
    """

    values: list[Any]
    errors: dict[int, Any] | None  # CarriedError here; the exception itself once unpickled
    duration: float
    worker: str
    init_error: Any = None  # the same, for an initializer that failed
    marshalled: bytes | None = None
    unreadable: Any = None  # the same, for a chunk that did not unpickle here
    stopped: bool = False


def dumps(obj: Any) -> bytes:
    """The wire's pickle, for a worker whose ``__main__`` is not the driver's.

    Raises:
        Exception: whatever cloudpickle raises for an object it cannot pickle.
    """
    return wire.dumps(obj, other_main=True)


#: fewer values than this are pickled with the rest of the reply
MARSHAL_MIN_VALUES = 64

# Worker-process state: the last runs' unpickled jobs (each unpickled once) and
# the initializers that ran here, by their token (a run's, or a warm pool's:
# once per worker for all its runs). The lock guards both: a worker may run
# several threads.
_worker_lock = threading.Lock()
_jobs: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
_initialized: set[str] = set()


def load_job(job: Pickled) -> tuple[Any, ...]:
    """The run's (fn, initializer, initargs, init_token), unpickled once per
    process; the initializer run once per process for its token.

    Raises:
        BaseException: what unpickling the job or the initializer raised.
    """
    with _worker_lock:
        loaded = _jobs.get(job.token)
        if loaded is None:
            loaded = _jobs[job.token] = pickle.loads(job.blob)
            while len(_jobs) > 8:
                _jobs.popitem(last=False)
        _, initializer, initargs, init_token = loaded
        if initializer is not None and init_token not in _initialized:
            initializer(*initargs)  # raising leaves it to run again for the next task
            _initialized.add(init_token)
        return loaded


def _pack(reply: Reply) -> Pickled:
    """The reply, pickled; a value that cannot be pickled fails its item alone.

    Values that are all of builtin types (numbers, strings, None, and lists,
    tuples, dicts and sets of them; exactly those types, no subclass) are
    marshalled instead: the same objects back, in about 60% of pickle's time
    each way for a list of ints, and for tiny items unpickling the values is
    most of the driver's work per item.
    marshal's format is Python's own, and the driver runs the workers'
    Python version (docs/dask.md).
    """
    if len(reply.values) >= MARSHAL_MIN_VALUES:
        try:
            reply.marshalled, reply.values = marshal.dumps(reply.values), []
        except ValueError:  # a value of another type: pickle them all
            pass
    try:
        return Pickled(dumps(reply))
    except Exception:
        pass  # find the culprits: the rare case may cost a pickle per value
    errors = dict(reply.errors or {})
    bad = wire.unpicklable(reply.values, "the value returned for this item", by_value=True)
    for k, error in bad.items():
        if k not in errors:
            reply.values[k] = None
            errors[k] = CarriedError(error)
    reply.errors = errors or None
    return Pickled(dumps(reply))


def unpack(blob: bytes | memoryview) -> Any:
    """The reply a task made (``_pack``'s ``Reply``, its values back in place,
    or ``quarantine.IsolatedReply``).

    Raises:
        Exception: what unpickling raises (e.g. a class the driver cannot import).
    """
    reply = pickle.loads(blob)
    if isinstance(reply, Reply) and reply.marshalled is not None:
        reply.values, reply.marshalled = marshal.loads(reply.marshalled), None
    return reply


def _until(items: Iterable[Any], deadline: float) -> Iterator[Any]:
    """The items, the first always, the others only before ``deadline``."""
    clock = time.perf_counter
    for k, item in enumerate(items):
        if k and clock() >= deadline:
            return
        yield item


def run_part(job: Pickled, chunk: Pickled, budget: float | None = None,
             stop_on_error: bool = False) -> Pickled:
    """Runs on a Dask worker: ``fn`` over the chunk, every failure of fn caught.

    With a ``budget`` (seconds), a probe: items after the first run only
    until it is spent, and the reply holds the values of those that ran.
    ``stop_on_error`` (all_or_nothing): no item starts after a failure.

    Returns the pickled ``Reply``.
    """
    from distributed import get_worker

    worker = get_worker().address
    try:
        fn = load_job(job)[0]
    except BaseException as exc:  # the initializer failed: the run must stop
        return _pack(Reply([], None, 0.0, worker, CarriedError(exc)))
    try:
        items: Sequence[Any] = pickle.loads(chunk.blob)
    except Exception as exc:  # an item's class cannot be imported here, or fails to rebuild
        return _pack(Reply([], None, 0.0, worker, unreadable=CarriedError(exc)))
    todo = items if budget is None else _until(items, time.perf_counter() + budget)
    try:
        outcome = run_chunk(sync_caller(fn), todo, worker, stop_on_error=stop_on_error)
    except BaseException as exc:  # KeyboardInterrupt in fn: fail the chunk, keep the worker
        return _pack(Reply([None] * len(items),
                           dict.fromkeys(range(len(items)), CarriedError(exc)), 0.0, worker))
    return _pack(Reply(outcome.values, carried(outcome.errors), outcome.duration, worker,
                       stopped=outcome.stopped))
