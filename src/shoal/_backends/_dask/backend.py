"""The Dask backend: the engine's tasks run as futures on a Dask cluster.

Two driver threads share the work; each owns its state, and they talk only
through queues::

    engine.acquire() ─Task─▶ feeder ──client.submit(run_part, job, chunk)──▶ cluster
         ▲                    │  ▲                                            │
         └─ engine.complete ◀─┘  └─ inbox ◀─ collector ◀─ finished futures ◀──┘
                                   ▲          (client.gather, unpickle; Dask's callback thread)
                                   └── "wake" (engine.on_capacity), "abandon" (consumer)

The feeder owns the futures in flight and every call to the engine; the
collector only fetches and unpickles results, so the feeder never waits on the
network. What runs on the workers is in ``_dask_worker``.

* Bounded: at most ``tasks_per_thread`` (2) x worker threads futures are in
  flight; the feeder acquires a task only when one finishes, so generators
  stream and the scheduler never holds more than that window.
* ``fn`` is pickled once per run; items and replies travel as one pickle per
  chunk (a reply's values of builtin types as one marshal blob: ``unpack``).
  Replies come straight from the workers when the scheduler is on this
  machine (``gather_direct``), not through the scheduler.
* ``chunk_size="auto"``: ``ChunkPlan`` (``_dask_chunks``) sizes chunks from measured item time
  (first one time-boxed probe per thread: the items it did not reach wait in
  ``_pending`` and go before new tasks); one item per task with a timeout or
  a rate limit.
* ``fn`` raising is caught on the worker: the item fails with its own
  exception, the worker traceback as ``__cause__ = RemoteTraceback``.
* A future that errs by itself means the cluster failed. ``KilledWorker`` or
  a cancellation means its worker died: a one-item task fails with
  ``WorkerCrashed`` (the engine retries per policy); a bigger chunk is rerun
  item by item, so only the item that kills workers fails.
* ``abandon`` (timeout) cancels the future. Dask cannot stop a running
  thread: the worker runs the hung call to its end, one thread short
  meanwhile. With a timeout the window is one task per thread, because the
  clock starts at submission and a task queued on a busy worker would spend
  its time waiting.

Which client a run uses (the caller's, or one shoal opens and closes) is
decided in ``_dask_client``. ``backend_options``: ``client`` (an open
``distributed.Client``), ``cluster_kwargs`` (for the ``LocalCluster``
started when no ``address`` is given), ``tasks_per_thread``. See docs/dask.md.
"""

from __future__ import annotations

import itertools
import math
import pickle
import queue
import re
import threading
import traceback
import uuid
from asyncio import CancelledError as AsyncioCancelledError
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle

from shoal._backends._base import Backend, Traits
from shoal._backends._dask.client import (
    Connection,
    cleanup,
    connect,
    current_client,
    gather_direct,
    import_distributed,
)
from shoal._backends._dask.worker import Pickled, Reply, dumps, run_part, unpack
from shoal._core.calling import Outcome
from shoal._core.engine import Wait, Work
from shoal._core.errors import (
    BrokenBackend,
    InvalidOptionError,
    NotPicklable,
    RemoteTraceback,
    ShoalError,
    WorkerCrashed,
)
from shoal._core.options import Options
from shoal._policies.dask_chunks import ChunkPlan

if TYPE_CHECKING:
    from shoal._core.engine import Engine, Task

def _restore(exc: BaseException, tb: str) -> BaseException:
    if tb:
        # The worker frames are in the cause; a copy Dask may have rebuilt on
        # the exception itself would only print them twice.
        exc.__cause__ = RemoteTraceback(tb)
        exc.__traceback__ = None
    return exc


# ------------------------------------------------------------ the driver side
@dataclass(slots=True, eq=False)
class _Record:
    """An engine task in flight, as one or more parts reported in index order."""

    task: Task
    parts: int = 0  # parts not yet finished
    next: int = 0  # offset of the first item not yet reported to the engine
    ready: dict[int, Outcome] = field(default_factory=dict)  # out of order, by offset


@dataclass(slots=True, eq=False)
class _Part:
    """One Dask future: items ``offset .. offset+count-1`` of a record's task."""

    record: _Record
    offset: int
    count: int
    future: Any = None


class DaskBackend(Backend):
    """Tasks as Dask futures on an existing cluster (``address=``) or a local one.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
        InvalidOptionError: ``backend_options`` it does not understand, or
            ``max_items_per_worker`` (not supported).
        NotPicklable: ``fn`` or the initializer cannot be pickled.
    """

    # Chunks are planned here (ChunkPlan: time-boxed probes, then cuts sized
    # for the cluster's threads), so the engine's own policy stays at one.
    traits = Traits("dask", default_workers=lambda: 2, isolates_crashes=True,
                    recycles_workers=False)

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int) -> None:
        super().__init__(fn, options, workers)
        self._distributed = import_distributed()
        extra = options.backend_options
        per_thread = extra.get("tasks_per_thread", 2)
        valid = (set(extra) <= {"client", "cluster_kwargs", "tasks_per_thread"}
                 and type(per_thread) is int and per_thread >= 1
                 and isinstance(extra.get("cluster_kwargs", {}), Mapping))
        if not valid:
            raise InvalidOptionError(
                f"backend_options for dask accept client (a distributed.Client), "
                f"cluster_kwargs (a dict) and tasks_per_thread (an int >= 1); got {dict(extra)!r}")
        if options.max_items_per_worker is not None:
            raise InvalidOptionError(
                'max_items_per_worker is not supported by backend="dask": Dask manages its '
                "workers' lifetimes (see `dask worker --lifetime`)")
        self._given_client: Any = extra.get("client")
        # Looked up here, on the caller's thread: a client made current with
        # as_current() is current only in the caller's context.
        self._current: Any = (current_client(self._distributed)
                              if options.address and self._given_client is None else None)
        self._cluster_kwargs: Mapping[str, Any] = extra.get("cluster_kwargs", {})
        self._tasks_per_thread: int = per_thread
        token = uuid.uuid4().hex[:12]
        try:
            job = (fn, options.initializer, options.initargs)
            self._job = Pickled(cloudpickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL), token)
        except Exception as exc:
            raise NotPicklable(
                f"fn cannot be pickled to send it to Dask workers: {exc!r}; define it at "
                "module level (importable on the workers) or make it cloudpickle-able"
            ) from exc
        label = re.sub(r"\W+", "_", getattr(fn, "__name__", type(fn).__name__)).strip("_")
        self._key_prefix = f"shoal-{label or 'fn'}-{token}"  # Dask's dashboard groups by it
        self._total: int | None = None
        self._closing = False
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        self._fetch: queue.SimpleQueue[Any] = queue.SimpleQueue()  # finished futures; None: stop
        self._collector: threading.Thread | None = None
        self.closer: threading.Thread | None = None  # closes the client to an address
        # Owned by the feeder thread (others only use _inbox and set _closing):
        self._connection: Connection | None = None
        self._client: Any = None  # the connection's client
        self._window = 1
        self._direct: bool | None = None  # gather from the workers themselves
        self._plan: ChunkPlan | None = None  # chunk_size="auto" without timeout or rate
        self._chunk = 1
        self._pulled = 0  # input items the engine has handed out so far
        self._parts: dict[Any, _Part] = {}  # future key -> part
        # Items a probe did not reach, as (record, offset, count): sent before new tasks.
        self._pending: deque[tuple[_Record, int, int]] = deque()
        self._records: dict[int, _Record] = {}  # task seq -> record
        self._keys = itertools.count()

    # ------------------------------------------------------------- consumer
    def start(self, engine: Engine) -> None:
        # Connecting (or starting a LocalCluster) takes a second or more: the
        # feeder does it, so an async consumer's event loop never blocks. A
        # failure reaches the consumer through engine.fail_run.
        self._engine = engine
        self._total = None if engine.total is None else engine.total - engine.pulled
        self._feeder = threading.Thread(target=self._feed, name="shoal-dask-feeder", daemon=True)
        self._feeder.start()

    def abandon(self, task: Task) -> None:
        self._inbox.put(("abandon", task))

    def shutdown(self, cancel: bool) -> None:
        # Joined even on cancel: the feeder closes the client and the cluster
        # shoal started, which must not outlive the run.
        self._closing = True
        self._inbox.put(("close", None))
        feeder = self._feeder
        if feeder is not None and feeder is not threading.current_thread():
            feeder.join()

    def wake(self, everyone: bool) -> None:
        self._inbox.put(("wake", None))

    # --------------------------------------------------------------- feeder
    def _feed(self) -> None:
        try:
            self._connect()
            self._loop()
        except BaseException as exc:
            error = exc
            if not isinstance(exc, ShoalError):
                error = BrokenBackend(f'backend="dask" failed: {exc!r}')
                error.__cause__ = exc
            self._engine.fail_run(error)
        finally:
            self._disconnect()

    def _connect(self) -> None:
        """Connect to the cluster (or start one) and size the window.

        Raises:
            BrokenBackend: the scheduler cannot be reached or has no workers.
        """
        self._connection = connect(self._distributed, self.options.address, self._given_client,
                                   self._current, self.workers, self._cluster_kwargs)
        self._client = self._connection.client
        threads = sum(self._client.nthreads().values())
        if not threads:
            raise BrokenBackend(f"the Dask cluster at {self._client.scheduler.address} has no "
                                "workers; start some with `dask worker <scheduler address>`")
        self.workers = threads  # reported in the BatchReport
        self._direct = gather_direct(self._client, self._connection.cluster is not None)
        self._collector = threading.Thread(target=self._collect, name="shoal-dask-collector",
                                           daemon=True)
        self._collector.start()
        per_thread = 1 if self.options.timeout is not None else self._tasks_per_thread
        self._window = per_thread * threads
        opts = self.options
        if opts.chunk_size == "auto" and opts.timeout is None and opts.rate is None:
            self._plan = ChunkPlan(threads, self._total)
        if opts.chunk_size != "auto":
            self._set_chunk(opts.chunk_size)
        else:  # the probes; then ChunkPlan, or one item per task
            self._set_chunk(1 if self._plan is None else self._plan.size(0))

    def _set_chunk(self, chunk: int) -> None:
        """Tell the engine, with the driver's default in-flight rule for this cluster."""
        limit = self.options.max_in_flight
        if limit is not None:
            chunk = max(1, min(chunk, limit // self.workers))
        self._chunk = chunk
        self._engine.set_chunk(chunk)

    def _room(self) -> bool:
        """A task may be submitted now; while chunks are probed, one per worker thread."""
        plan = self._plan
        if plan is not None and plan.probing:
            return len(self._parts) < plan.threads
        return len(self._parts) < self._window

    def _loop(self) -> None:
        engine, more = self._engine, True
        while not self._closing:
            timeout: float | None = None  # None: until a message arrives
            while (more or self._pending) and self._room() and not self._closing:
                if self._pending:  # items a probe did not reach go first
                    self._submit(*self._pending.popleft())
                    continue
                if self._plan is not None:
                    chunk = self._plan.size(self._pulled)
                    if chunk != self._chunk:
                        self._set_chunk(chunk)
                got = engine.acquire()
                if isinstance(got, Wait):
                    timeout = None if math.isinf(got.seconds) else got.seconds
                    break
                if not isinstance(got, Work):
                    more = False  # DONE
                    continue
                task = got.task
                self._pulled = max(self._pulled, task.stop)
                record = self._records[task.seq] = _Record(task, next=task.done)
                self._submit(record, task.done, len(task.items) - task.done)
            if not more and (not (self._parts or self._pending) or engine.stopped):
                return
            try:
                msgs = [self._inbox.get(timeout=timeout)]
            except queue.Empty:
                continue
            while not self._inbox.empty():
                msgs.append(self._inbox.get())
            self._handle(msgs)

    def _submit(self, record: _Record, offset: int, count: int) -> None:
        try:
            blob = dumps(record.task.items[offset : offset + count])
        except Exception as exc:
            record.parts += 1
            error = NotPicklable(f"item {record.task.start + offset} cannot be pickled to "
                                 f"send it to a Dask worker: {exc!r}")
            self._rerun_alone(_Part(record, offset, count), error, exc)
            return
        budget = None
        if self._plan is not None:
            self._plan.pickled(count, len(blob))
            budget = self._plan.budget()
        key = f"{self._key_prefix}-{next(self._keys)}"
        args = (self._job, Pickled(blob)) if budget is None else (self._job, Pickled(blob), budget)
        future = self._client.submit(run_part, *args, key=key, pure=False)
        self._parts[future.key] = _Part(record, offset, count, future)
        record.parts += 1
        future.add_done_callback(self._fetch.put)  # on Dask's callback thread

    def _rerun_alone(self, part: _Part, error: BaseException, cause: BaseException) -> None:
        """One of the part's items is to blame, but which is unknown.

        Several items: each runs again as a part of its own, not counted as an
        attempt, so only the guilty one ends up failed. One item: it fails.
        """
        if part.count > 1:
            part.record.parts -= 1
            for k in range(part.count):
                self._submit(part.record, part.offset + k, 1)
            return
        error.__cause__ = cause
        worker = getattr(getattr(cause, "last_worker", None), "address", "")
        self._report(part, Outcome([None], {0: error}, 0.0, str(worker or "")))

    def _handle(self, msgs: list[tuple[str, Any]]) -> None:
        for kind, payload in msgs:
            if kind == "abandon":
                self._drop(payload)
            elif kind == "broken":
                raise BrokenBackend(f"fetching results from Dask failed: {payload!r}") from payload
            elif kind == "fetched":
                for future, reply, exc in payload:
                    part = self._parts.pop(future.key, None)
                    if part is None:
                        continue  # abandoned after a timeout
                    if exc is None:
                        self._received(part, reply)
                    else:
                        self._failed(part, exc)

    def _collect(self) -> None:
        """Collector thread: fetches finished futures, so the feeder never waits on the network.

        It touches only futures; what it fetched goes to the feeder as a message.
        """
        try:
            while True:
                futures = [self._fetch.get()]
                while not self._fetch.empty():
                    futures.append(self._fetch.get())
                # One status read per future: it may change while we look.
                states = [(f, f.status) for f in futures if f is not None]
                fetched: list[tuple[Any, Reply | None, BaseException | None]] = [
                    (f, None, _future_error(f)) for f, state in states if state != "finished"]
                finished = [f for f, state in states if state == "finished"]
                try:  # one round trip for all of them
                    blobs = self._client.gather(finished, direct=self._direct) if finished else []
                except Exception:  # one could not be fetched: find which, one at a time
                    blobs = []
                    for f in finished:
                        try:
                            blobs.append(f.result())
                        except Exception as exc:
                            blobs.append(exc)
                for f, blob in zip(finished, blobs, strict=True):
                    if isinstance(blob, BaseException):
                        fetched.append((f, None, blob))
                        continue
                    try:
                        fetched.append((f, unpack(blob.blob), None))
                    except Exception as exc:  # e.g. a class the driver cannot import
                        fetched.append((f, None, exc))
                if fetched:
                    self._inbox.put(("fetched", fetched))
                if None in futures:
                    return
        except BaseException as exc:  # the feeder must not wait for results forever
            self._inbox.put(("broken", exc))

    def _received(self, part: _Part, reply: Reply) -> None:
        if reply.init_error is not None:
            self._engine.fail_run(reply.init_error)
            return
        ran = len(reply.values)
        if self._plan is not None:
            self._plan.took(ran, reply.duration)
        if ran < part.count:  # a probe stopped at its time budget
            step = self._plan.size(self._pulled) if self._plan is not None else 1
            for offset in range(part.offset + ran, part.offset + part.count, step):
                count = min(step, part.offset + part.count - offset)
                self._pending.append((part.record, offset, count))
        self._report(part, Outcome(reply.values, reply.errors, reply.duration, reply.worker))

    def _failed(self, part: _Part, exc: BaseException) -> None:
        """A future erred by itself (``fn`` raising never gets here)."""
        lost = isinstance(exc, (self._distributed.KilledWorker, CancelledError,
                                AsyncioCancelledError))
        if lost and self._client.status not in ("running", "connecting"):
            raise BrokenBackend(
                f"lost the connection to the Dask scheduler ({self._client.status})"
            ) from exc
        if lost:
            index = part.record.task.start + part.offset
            self._rerun_alone(part, WorkerCrashed(
                f"item {index}: the Dask worker running it died or was lost ({exc})"), exc)
            return
        # The task cannot run on the cluster at all (fn does not unpickle
        # there, ...): each of its items fails with that error.
        failure = _restore(exc, _format_tb(part.future))
        self._report(part, Outcome([None] * part.count, dict.fromkeys(range(part.count),
                                                                      failure), 0.0, ""))

    def _report(self, part: _Part, outcome: Outcome) -> None:
        """Give the engine every outcome of the record that is next in order."""
        record, task = part.record, part.record.task
        record.parts -= 1
        record.ready[part.offset] = outcome
        while record.next in record.ready:
            done = record.ready.pop(record.next)
            record.next += len(done.values)
            self._engine.complete(task, done)
        if record.parts == 0 and record.next >= len(task.items):
            del self._records[task.seq]

    def _drop(self, task: Task) -> None:
        """The engine gave up on ``task`` (timeout): cancel what still runs."""
        record = self._records.pop(task.seq, None)
        self._pending = deque(p for p in self._pending if p[0] is not record)
        doomed = [p for p in self._parts.values() if p.record is record]
        for part in doomed:
            del self._parts[part.future.key]
        if doomed:
            self._client.cancel([p.future for p in doomed])

    def _disconnect(self) -> None:
        """Cancel what is left and close what shoal opened."""
        client, connection = self._client, self._connection
        futures = [p.future for p in self._parts.values()]
        self._parts.clear()
        self._pending.clear()
        self._records.clear()
        if futures:
            cleanup("cancel the remaining tasks", lambda: client.cancel(futures))
        if self._collector is not None:
            self._fetch.put(None)
            self._collector.join()
        if connection is not None:
            self.closer = connection.close()
        self._client = self._connection = None


def _future_error(future: Any) -> BaseException:
    """The exception of an erred or cancelled future."""
    try:
        exc = future.exception()
    except (CancelledError, AsyncioCancelledError) as cancelled:
        return cancelled
    if exc is None:  # "cancelled" or "lost" without a stored exception
        return CancelledError(f"Dask future {future.key} ended as {future.status!r}")
    return exc  # type: ignore[no-any-return]


def _format_tb(future: Any) -> str:
    try:
        tb = future.traceback()
    except Exception:  # the traceback is a nicety: the error itself is reported
        return ""
    return "".join(traceback.format_tb(tb)) if tb is not None else ""
