"""The Dask backend: the engine's tasks run as futures on a Dask cluster.

Two driver threads share the work; each owns its state, and they talk only
through queues::

    engine.acquire() ─Task─▶ feeder ──client.submit(_run_part, job, chunk)──▶ cluster
         ▲                    │  ▲                                             │
         └─ engine.complete ◀─┘  └─ inbox ◀─ collector ◀─ finished futures ◀───┘
                                   ▲          (client.gather; Dask's callback thread)
                                   └── "wake" (engine.on_capacity), "abandon" (consumer)

The feeder owns the futures in flight and every call to the engine; the
collector only fetches results, so the feeder never waits on the network.

* Bounded: at most ``tasks_per_thread`` (2) x worker threads futures are in
  flight; the feeder acquires a task only when one finishes, so generators
  stream and the scheduler never holds more than that window.
* ``fn`` is pickled once per run; items travel as one pickle per chunk.
  ``chunk_size="auto"`` starts at one item, and the engine grows chunks from
  measured item time until a task computes for about ``TARGET_TASK_SECONDS``
  (``Engine.adapt_chunks``); one item per task with a timeout.
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

``backend_options``: ``client`` (an existing ``distributed.Client``, left
open), ``cluster_kwargs`` (for the ``LocalCluster`` started when no
``address`` is given), ``tasks_per_thread``. See docs/dask.md.
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
import warnings
from asyncio import CancelledError as AsyncioCancelledError
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle

from shoal._backends._base import Backend
from shoal._calling import Outcome, run_chunk, sync_caller
from shoal._errors import (
    BackendUnavailable,
    BrokenBackend,
    InvalidOptionError,
    NotPicklable,
    RemoteTraceback,
    ShoalError,
    WorkerCrashed,
)
from shoal._options import Options

if TYPE_CHECKING:
    from shoal._engine import Engine, Task

#: a task should compute for about this long once chunks have grown
TARGET_TASK_SECONDS = 0.1
#: the largest chunk ``chunk_size="auto"`` grows to
MAX_AUTO_CHUNK = 100_000


def import_distributed() -> Any:
    """Import ``dask.distributed``, on first use of the backend only.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
    """
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailable(
            'backend="dask" needs dask.distributed: pip install "shoal[dask]"'
        ) from exc
    return distributed


# ------------------------------------------------------------ the worker side
class _Pickled:
    """Bytes pickled on the driver, opaque to Dask.

    Dask unpickles task arguments on the scheduler and walks plain lists item
    by item (seconds for 100,000 items); bytes cross untouched, and the
    scheduler never needs the user's classes. ``fn`` travels this way too, as
    one blob per run that a worker unpickles once (``_load_job``): a scattered
    copy would tie every task to the workers holding it (Dask places tasks
    next to their data) and be lost for good when those workers died.
    """

    __slots__ = ("blob", "token")

    def __init__(self, blob: bytes, token: str = "") -> None:
        self.blob = blob
        self.token = token


@dataclass(slots=True)
class _Reply:
    """What a task sends back: ``Outcome`` fields, errors with their traceback text."""

    values: list[Any]
    errors: dict[int, tuple[BaseException, str]] | None
    duration: float
    worker: str
    init_error: tuple[BaseException, str] | None = None


def _dumps(obj: Any) -> bytes:
    """Plain pickle (fast for data), else cloudpickle (lambdas, ``__main__``).

    Plain pickle refers to ``__main__`` objects by name, which on a worker
    names another module, so such a pickle is redone by value (as Dask does).

    Raises:
        Exception: whatever cloudpickle raises for an object it cannot pickle.
    """
    try:
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in blob:
            return blob
    except Exception:
        pass  # cloudpickle below can do more, or raises the error worth showing
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


# Worker-process state: the last runs' unpickled jobs (each unpickled once) and
# the runs whose initializer ran here. The lock guards both: a worker may run
# several threads.
_worker_lock = threading.Lock()
_jobs: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
_initialized: set[str] = set()


def _load_job(job: _Pickled) -> tuple[Any, ...]:
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


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """The exception (or a ``NotPicklable`` copy) and its traceback text.

    Tracebacks do not pickle, so the text travels beside the exception; one
    that cannot make the round trip is replaced, keeping type and message.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(_dumps(exc))
    except Exception as why:
        exc = NotPicklable(f"{type(exc).__qualname__}: {exc} (cannot be pickled back from "
                           f"the Dask worker: {why!r})")
    return exc, tb


def _run_part(job: _Pickled, chunk: _Pickled) -> _Reply:
    """Runs on a Dask worker: ``fn`` over the chunk, every failure of fn caught."""
    from distributed import get_worker

    worker = get_worker().address
    try:
        fn = _load_job(job)[0]
    except BaseException as exc:  # the initializer failed: the run must stop
        return _Reply([], None, 0.0, worker, _portable(exc))
    items: list[Any] = pickle.loads(chunk.blob)
    try:
        outcome = run_chunk(sync_caller(fn), items, worker)
    except BaseException as exc:  # SystemExit and the like: fail the chunk, keep the worker
        return _Reply([None] * len(items), dict.fromkeys(range(len(items)), _portable(exc)),
                      0.0, worker)
    errors = None if outcome.errors is None else {
        k: _portable(e) for k, e in outcome.errors.items()}
    return _Reply(outcome.values, errors, outcome.duration, worker)


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

    name = "dask"

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
        self._cluster_kwargs: Mapping[str, Any] = extra.get("cluster_kwargs", {})
        self._tasks_per_thread: int = per_thread
        token = uuid.uuid4().hex[:12]
        try:
            job = (fn, options.initializer, options.initargs)
            self._job = _Pickled(cloudpickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL), token)
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
        # Owned by the feeder thread (others only use _inbox and set _closing):
        self._client: Any = None
        self._cluster: Any = None
        self._window = 1
        self._parts: dict[Any, _Part] = {}  # future key -> part
        self._records: dict[int, _Record] = {}  # task seq -> record
        self._keys = itertools.count()

    @classmethod
    def default_workers(cls) -> int:
        return 2  # workers of the LocalCluster started when no address is given

    def auto_chunk_size(self, total: int | None) -> int:
        self._total = total  # bounds the chunk once the cluster's size is known
        return 1  # grown by the engine from measurements (see _connect)

    # ------------------------------------------------------------- consumer
    def start(self, engine: Engine) -> None:
        # Connecting (or starting a LocalCluster) takes a second or more: the
        # feeder does it, so an async consumer's event loop never blocks. A
        # failure reaches the consumer through engine.fail_run.
        self._engine = engine
        engine.on_capacity = self._wake
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

    def _wake(self, everyone: bool) -> None:
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
        d, address = self._distributed, self.options.address
        if self._given_client is not None:
            self._client = self._given_client
        elif address:
            try:
                self._client = d.Client(address, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise BrokenBackend(
                    f"cannot connect to the Dask scheduler at {address!r}: {exc}; check that "
                    "`dask scheduler` runs there and that its port is reachable"
                ) from exc
        else:
            self._cluster = d.LocalCluster(**{
                "n_workers": self.workers, "threads_per_worker": 1, "processes": True,
                "host": "127.0.0.1", "dashboard_address": None, **self._cluster_kwargs})
            self._client = d.Client(self._cluster, set_as_default=False)
        threads = sum(self._client.nthreads().values())
        if not threads:
            raise BrokenBackend(f"the Dask cluster at {self._client.scheduler.address} has no "
                                "workers; start some with `dask worker <scheduler address>`")
        self.workers = threads  # reported in the BatchReport
        self._collector = threading.Thread(target=self._collect, name="shoal-dask-collector",
                                           daemon=True)
        self._collector.start()
        per_thread = 1 if self.options.timeout is not None else self._tasks_per_thread
        self._window = per_thread * threads
        opts = self.options
        chunk = 1 if opts.chunk_size == "auto" else opts.chunk_size
        # The driver's default in-flight rule, now with the cluster's real size.
        self._engine.set_chunk_size(chunk, max(64, 4 * threads * chunk))
        if opts.chunk_size == "auto" and opts.timeout is None and opts.rate is None:
            # Same conditions as the driver's adaptive chunks, with a cap fit
            # for a cluster: at most MAX_AUTO_CHUNK, and four tasks per thread
            # at least when the input's length is known, so the last ones balance.
            cap = MAX_AUTO_CHUNK if self._total is None else self._total // (4 * threads)
            self._engine.adapt_chunks(TARGET_TASK_SECONDS, threads,
                                      cap=max(1, min(cap, MAX_AUTO_CHUNK)))

    def _loop(self) -> None:
        engine, more = self._engine, True
        while not self._closing:
            timeout: float | None = None  # None: until a message arrives
            while more and len(self._parts) < self._window and not self._closing:
                got = engine.acquire()
                if got is None:
                    more = False
                elif isinstance(got, float):
                    timeout = None if math.isinf(got) else got
                    break
                else:
                    record = self._records[got.seq] = _Record(got, next=got.done)
                    self._submit(record, got.done, len(got.items) - got.done)
            if not more and (not self._parts or engine.stopped):
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
            blob = _dumps(record.task.items[offset : offset + count])
        except Exception as exc:
            record.parts += 1
            error = NotPicklable(f"item {record.task.start + offset} cannot be pickled to "
                                 f"send it to a Dask worker: {exc!r}")
            self._rerun_alone(_Part(record, offset, count), error, exc)
            return
        key = f"{self._key_prefix}-{next(self._keys)}"
        future = self._client.submit(_run_part, self._job, _Pickled(blob), key=key, pure=False)
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
                fetched: list[tuple[Any, _Reply | None, BaseException | None]] = [
                    (f, None, _future_error(f)) for f, state in states if state != "finished"]
                finished = [f for f, state in states if state == "finished"]
                try:  # one round trip for all of them
                    replies = self._client.gather(finished) if finished else []
                    fetched += [(f, r, None) for f, r in zip(finished, replies, strict=True)]
                except Exception:  # one could not be fetched: find which, one at a time
                    for f in finished:
                        try:
                            fetched.append((f, f.result(), None))
                        except Exception as exc:
                            fetched.append((f, None, exc))
                if fetched:
                    self._inbox.put(("fetched", fetched))
                if None in futures:
                    return
        except BaseException as exc:  # the feeder must not wait for results forever
            self._inbox.put(("broken", exc))

    def _received(self, part: _Part, reply: _Reply) -> None:
        if reply.init_error is not None:
            self._engine.fail_run(_restore(*reply.init_error))
            return
        errors = None if reply.errors is None else {
            k: _restore(e, tb) for k, (e, tb) in reply.errors.items()}
        self._report(part, Outcome(reply.values, errors, reply.duration, reply.worker))

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
        doomed = [p for p in self._parts.values() if p.record is record]
        for part in doomed:
            del self._parts[part.future.key]
        if doomed:
            self._client.cancel([p.future for p in doomed])

    def _disconnect(self) -> None:
        """Cancel what is left and close what shoal opened."""
        client, cluster = self._client, self._cluster
        pending = [p.future for p in self._parts.values()]
        self._parts.clear()
        self._records.clear()
        if pending:
            _cleanup("cancel the remaining tasks", lambda: client.cancel(pending))
        if self._collector is not None:
            self._fetch.put(None)
            self._collector.join()
        if client is not None and self._given_client is None:
            _cleanup("close the Dask client", client.close)
        if cluster is not None:
            _cleanup("close the LocalCluster", cluster.close)
        self._client = self._cluster = None


def _cleanup(what: str, step: Callable[[], Any]) -> None:
    try:
        step()
    except Exception as exc:  # the other cleanup steps still run; this one is reported
        warnings.warn(f"shoal: could not {what}: {exc!r}", RuntimeWarning, stacklevel=2)


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
