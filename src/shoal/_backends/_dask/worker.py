"""The Dask backend's worker side: the task function and what it carries.

Everything that crosses the cluster is bytes shoal pickled itself, wrapped in
``Pickled``: the job (``fn``, the initializer and its arguments, one blob per
run), each chunk of items, and each reply. Dask moves them as out-of-band
frames, untouched: its scheduler unpickles task arguments and would walk plain
lists item by item (seconds for 100,000 items), and a reply pickled by Dask
would be unpickled on the driver's Dask event loop; as bytes, the driver
unpickles it on shoal's collector thread instead, and a value that cannot be
pickled fails its item alone.

``fn`` travels inside every task but is unpickled once per worker process
(``_load_job``, cached by the run's token). A scattered copy would tie every
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
from shoal._core.errors import NotPicklable
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
    """What a task sends back: ``Outcome`` fields, errors with their traceback text.

    On the wire, values of builtin types only travel as ``marshalled`` (see
    ``_pack``) and ``values`` is empty; ``unpack`` puts them back.
    """

    values: list[Any]
    errors: dict[int, Any] | None  # CarriedError here; the exception itself once unpickled
    duration: float
    worker: str
    init_error: Any = None  # the same, for an initializer that failed
    marshalled: bytes | None = None


def dumps(obj: Any) -> bytes:
    """The wire's pickle, for a worker whose ``__main__`` is not the driver's.

    Raises:
        Exception: whatever cloudpickle raises for an object it cannot pickle.
    """
    return wire.dumps(obj, other_main=True)


#: fewer values than this are pickled with the rest of the reply
MARSHAL_MIN_VALUES = 64

# Worker-process state: the last runs' unpickled jobs (each unpickled once) and
# the runs whose initializer ran here. The lock guards both: a worker may run
# several threads.
_worker_lock = threading.Lock()
_jobs: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
_initialized: set[str] = set()


def _load_job(job: Pickled) -> tuple[Any, ...]:
    with _worker_lock:
        loaded = _jobs.get(job.token)
        if loaded is None:
            loaded = _jobs[job.token] = pickle.loads(job.blob)
            while len(_jobs) > 8:
                _jobs.popitem(last=False)
        if loaded[1] is not None and job.token not in _initialized:
            loaded[1](*loaded[2])  # the initializer; raising leaves the run uninitialized
            _initialized.add(job.token)
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
        pass  # find the culprits below: the rare case may cost a pickle per item
    errors = dict(reply.errors or {})
    for k, value in enumerate(reply.values):
        if k in errors:
            continue
        try:
            dumps(value)
        except Exception as why:
            reply.values[k] = None
            errors[k] = CarriedError(NotPicklable(
                f"the value returned for this item cannot be pickled to send it back "
                f"from the Dask worker: {why!r}"))
    reply.errors = errors or None
    return Pickled(dumps(reply))


def unpack(blob: bytes | memoryview) -> Reply:
    """The reply ``_pack`` made, its values back in place.

    Raises:
        Exception: what unpickling raises (e.g. a class the driver cannot import).
    """
    reply: Reply = pickle.loads(blob)
    if reply.marshalled is not None:
        reply.values, reply.marshalled = marshal.loads(reply.marshalled), None
    return reply


def _until(items: Iterable[Any], deadline: float) -> Iterator[Any]:
    """The items, the first always, the others only before ``deadline``."""
    clock = time.perf_counter
    for k, item in enumerate(items):
        if k and clock() >= deadline:
            return
        yield item


def run_part(job: Pickled, chunk: Pickled, budget: float | None = None) -> Pickled:
    """Runs on a Dask worker: ``fn`` over the chunk, every failure of fn caught.

    With a ``budget`` (seconds), a probe: items after the first run only
    until it is spent, and the reply holds the values of those that ran.

    Returns the pickled ``Reply``.
    """
    from distributed import get_worker

    worker = get_worker().address
    try:
        fn = _load_job(job)[0]
    except BaseException as exc:  # the initializer failed: the run must stop
        return _pack(Reply([], None, 0.0, worker, CarriedError(exc)))
    items: Sequence[Any] = pickle.loads(chunk.blob)
    todo = items if budget is None else _until(items, time.perf_counter() + budget)
    try:
        outcome = run_chunk(sync_caller(fn), todo, worker)
    except BaseException as exc:  # SystemExit and the like: fail the chunk, keep the worker
        return _pack(Reply([None] * len(items),
                           dict.fromkeys(range(len(items)), CarriedError(exc)), 0.0, worker))
    return _pack(Reply(outcome.values, carried(outcome.errors), outcome.duration, worker))
