"""The Dask backend: the engine's tasks run on a Dask cluster.

Data flow (one feeder thread on the driver owns every Dask future)::

    engine.acquire() ──Task──▶ feeder thread ──client.submit(_run_part, job, _Chunk)──▶ cluster
          ▲                     │    ▲                                                   │
          └─ complete/release ◀─┘    └──── inbox ◀── done callback (Dask's callback thread)
                                           ▲
                                           ├── "wake"    engine.on_capacity (any thread)
                                           └── "abandon" consumer thread, after a timeout

* **Bounded submission.** The feeder keeps at most ``window`` futures in flight
  (``tasks_per_thread`` x the cluster's worker threads, 2 by default) and asks
  the engine for a task only when one finishes, so a generator of a million
  items streams and the scheduler never holds more than a window of tasks.
* **Serialized once.** The function (with the initializer) is scattered to
  every worker once per run; each task refers to it by key. Items and results
  travel inside small opaque objects (``_Chunk``, ``_Reply``) because Dask
  walks plain lists element by element, which costs seconds for 100,000 items.
* **Chunking.** With ``chunk_size="auto"`` a task starts with one item and the
  chunk grows from the measured compute time per item until a task computes
  for about ``TARGET_TASK_SECONDS`` (``ChunkSizer``). With a ``timeout`` a
  task stays one item, since the deadline is per item.
* **Failures.** ``fn`` raising is caught on the worker (``run_chunk``): the
  item fails with its own exception and the worker-side traceback as
  ``__cause__ = RemoteTraceback(...)``. A future that errs on its own is the
  cluster's failure: ``KilledWorker`` or a cancellation by the scheduler means
  a worker died. A one-item task then fails with ``WorkerCrashed`` (the engine
  retries it per policy); a larger chunk is split and resubmitted item by item,
  so only the item that kills its worker ends up failed. The batch goes on.
* **Timeouts.** ``abandon`` cancels the future. Dask cannot interrupt a
  running Python thread, so the worker thread keeps running the hung call in
  the background until it returns, and that worker has one thread fewer
  meanwhile. While a timeout is set the window is one task per worker thread,
  because the timeout clock starts at submission and a task queued behind
  another on a worker would otherwise use up its time waiting.
* **Initializer.** ``initializer(*initargs)`` runs once per worker process per
  run, before that worker's first item. If it raises, the run stops with its
  exception, as on the other backends. ``max_items_per_worker`` is not
  supported (Dask manages worker lifetimes).

Functions and items must be cloudpickle-able, and ``shoal`` itself must be
importable on every worker (the task function lives in this module).

``backend_options`` understood here: ``client`` (an existing
``distributed.Client``, used and left open), ``cluster_kwargs`` (extra keyword
arguments for the ``LocalCluster`` shoal starts when no ``address`` is given)
and ``tasks_per_thread`` (the in-flight window per worker thread).
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
_BACKEND_OPTIONS = ("client", "cluster_kwargs", "tasks_per_thread")


def import_distributed() -> Any:
    """Import ``dask.distributed`` on first use of the backend.

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


# ------------------------------------------------------------------ chunk size
@dataclass
class ChunkSizer:
    """Chooses the chunk size from measured compute time per item.

    Pure bookkeeping (no clock of its own), so it is tested with made-up
    durations. Per-item time is an exponentially weighted average, so the
    size follows items that get slower or faster, and it grows at most
    ``max_growth`` times per observation so one lucky measurement cannot
    jump to a huge chunk.
    """

    chunk: int = 1
    target: float = TARGET_TASK_SECONDS
    limit: int = MAX_AUTO_CHUNK
    max_growth: int = 16
    decay: float = 0.7
    _items: float = field(default=0.0, repr=False)
    _seconds: float = field(default=0.0, repr=False)

    def observe(self, items: int, seconds: float) -> bool:
        """Record ``items`` computed in ``seconds``; True when ``chunk`` changed."""
        if items <= 0:
            return False
        self._items = self._items * self.decay + items
        self._seconds = self._seconds * self.decay + max(seconds, 0.0)
        per_item = self._seconds / self._items
        ideal = self.limit if per_item <= 0 else int(self.target / per_item)
        new = max(1, min(ideal, self.limit, self.chunk * self.max_growth))
        # Hysteresis: small wobbles of the measurement do not resize chunks.
        if self.chunk // 2 < new < self.chunk * 2:
            return False
        self.chunk = new
        return True


# ------------------------------------------------------------ the worker side
class _Job:
    """What every task needs and is scattered once: fn and the initializer."""

    __slots__ = ("fn", "initargs", "initializer", "token")

    def __init__(self, fn: Callable[[Any], Any], initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...], token: str) -> None:
        self.fn = fn
        self.initializer = initializer
        self.initargs = initargs
        self.token = token


class _Chunk:
    """The items of one task. Opaque so that Dask pickles it in one go."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


class _Reply:
    """What a task sends back: ``Outcome`` fields with portable errors."""

    __slots__ = ("duration", "errors", "init_error", "values", "worker")

    def __init__(self, values: list[Any], errors: dict[int, tuple[BaseException, str]] | None,
                 duration: float, worker: str,
                 init_error: tuple[BaseException, str] | None = None) -> None:
        self.values = values
        self.errors = errors
        self.duration = duration
        self.worker = worker
        self.init_error = init_error


# Worker-process state: the runs whose initializer already ran here. The lock
# makes a multi-threaded worker run each initializer once.
_init_lock = threading.Lock()
_initialized: set[str] = set()


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """The exception and its formatted traceback, in a form that will unpickle.

    Tracebacks do not pickle, so the text travels beside the exception. An
    exception whose class cannot make the round trip is replaced by a
    ``NotPicklable`` that keeps its type name and message.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception as why:
        exc = NotPicklable(
            f"{type(exc).__qualname__}: {exc} (the exception could not be pickled back from "
            f"the Dask worker: {why!r})"
        )
    return exc, tb


def _run_part(job: _Job, chunk: _Chunk) -> _Reply:
    """Runs on a Dask worker: ``fn`` over the chunk, every failure caught."""
    from distributed import get_worker

    worker = get_worker().address
    if job.initializer is not None and job.token not in _initialized:
        with _init_lock:
            if job.token not in _initialized:
                try:
                    job.initializer(*job.initargs)
                except BaseException as exc:  # the run must stop: report, do not raise
                    return _Reply([], None, 0.0, worker, _portable(exc))
                _initialized.add(job.token)
    items = chunk.items
    try:
        outcome = run_chunk(sync_caller(job.fn), items, worker)
    except BaseException as exc:  # SystemExit and the like: fail the chunk, keep the worker
        fail = _portable(exc)
        return _Reply([None] * len(items), dict.fromkeys(range(len(items)), fail), 0.0, worker)
    errors = None
    if outcome.errors is not None:
        errors = {k: _portable(e) for k, e in outcome.errors.items()}
    return _Reply(outcome.values, errors, outcome.duration, worker)


def _restore(exc: BaseException, tb: str) -> BaseException:
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


# ------------------------------------------------------------ the driver side
class _Record:
    """An engine task in flight: one or more parts, reported in index order."""

    __slots__ = ("next", "parts", "ready", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.parts = 0  # parts not yet finished
        self.next = task.done  # the first item not yet reported to the engine
        self.ready: dict[int, Outcome] = {}  # finished out of order, by item offset


@dataclass(slots=True)
class _Part:
    """One Dask future: items ``offset .. offset+count-1`` of a record's task."""

    record: _Record
    offset: int
    count: int
    future: Any


class DaskBackend(Backend):
    """Tasks as Dask futures on an existing cluster (``address=``) or a local one."""

    name = "dask"

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int) -> None:
        super().__init__(fn, options, workers)
        self._distributed = import_distributed()
        extra = options.backend_options
        _check_backend_options(extra)
        self._given_client: Any = extra.get("client")
        self._cluster_kwargs: Mapping[str, Any] = extra.get("cluster_kwargs") or {}
        self._tasks_per_thread: int = extra.get("tasks_per_thread", 2)
        self._token = uuid.uuid4().hex[:12]
        self._job = _Job(fn, options.initializer, options.initargs, self._token)
        try:
            cloudpickle.dumps(self._job)
        except Exception as exc:
            raise NotPicklable(
                f"fn cannot be pickled to send it to Dask workers: {exc!r}; define it at "
                "module level (importable on the workers) or make it cloudpickle-able"
            ) from exc
        label = re.sub(r"\W+", "_", getattr(fn, "__name__", type(fn).__name__)).strip("_")
        self._key_prefix = f"shoal-{label or 'fn'}-{self._token}"
        auto = options.chunk_size == "auto" and options.timeout is None
        self._sizer = ChunkSizer() if auto else None
        self._total: int | None = None
        self._closing = False
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        # Everything below is owned by the feeder thread: other threads only
        # put messages in _inbox (and set _closing).
        self._client: Any = None
        self._cluster: Any = None
        self._job_future: Any = None
        self._threads = workers
        self._window = 1
        self._parts: dict[Any, _Part] = {}  # future key -> part
        self._records: dict[int, _Record] = {}  # task seq -> record
        self._keys = itertools.count()

    @classmethod
    def default_workers(cls) -> int:
        return 2  # workers of the LocalCluster started when no address is given

    def auto_chunk_size(self, total: int | None) -> int:
        self._total = total
        return self._sizer.chunk if self._sizer is not None else 1

    # ------------------------------------------------------------- consumer
    def start(self, engine: Engine) -> None:
        # Connecting (or starting a LocalCluster) takes a second or more: the
        # feeder does it, so that an async consumer's event loop never blocks.
        # A failure reaches the consumer through engine.fail_run.
        self._engine = engine
        engine.on_capacity = self._wake
        self._feeder = threading.Thread(target=self._feed, name="shoal-dask-feeder", daemon=True)
        self._feeder.start()

    def abandon(self, task: Task) -> None:
        self._inbox.put(("abandon", task))

    def shutdown(self, cancel: bool) -> None:
        # Even with cancel the feeder is joined: it closes the client and the
        # cluster shoal started, which must not outlive the run.
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
            if isinstance(exc, ShoalError):
                error: BaseException = exc
            else:
                error = BrokenBackend(f'backend="dask" failed: {exc!r}')
                error.__cause__ = exc
            self._engine.fail_run(error)
        finally:
            self._disconnect()

    def _connect(self) -> None:
        """Connect to the cluster, scatter the job and size the window.

        Raises:
            BrokenBackend: the scheduler cannot be reached.
        """
        d = self._distributed
        address = self.options.address
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
            kwargs: dict[str, Any] = {
                "n_workers": self.workers, "threads_per_worker": 1, "processes": True,
                "host": "127.0.0.1", "dashboard_address": None,
            }
            kwargs.update(self._cluster_kwargs)
            self._cluster = d.LocalCluster(**kwargs)
            self._client = d.Client(self._cluster, set_as_default=False)
        threads = sum(self._client.nthreads().values())
        if threads == 0:
            raise BrokenBackend(
                f"the Dask cluster at {self._client.scheduler.address} has no workers; "
                "start some with `dask worker <scheduler address>`"
            )
        self._threads = threads
        self.workers = threads  # reported in the BatchReport
        per_thread = 1 if self.options.timeout is not None else self._tasks_per_thread
        self._window = max(1, per_thread * threads)
        self._job_future = self._client.scatter(self._job, broadcast=True, hash=False)
        chunk = self.options.chunk_size
        if self._sizer is not None and self._total is not None:
            # Keep some four tasks per thread, so that the last ones balance.
            self._sizer.limit = max(1, min(self._sizer.limit, self._total // (4 * threads)))
        self._resize(chunk if chunk != "auto" else self._sizer_chunk())

    def _sizer_chunk(self) -> int:
        return self._sizer.chunk if self._sizer is not None else 1

    def _resize(self, chunk: int) -> None:
        # The same rule as the driver's default, with the cluster's real size.
        self._engine.set_chunk_size(chunk, max(64, 4 * self._threads * chunk))

    def _loop(self) -> None:
        engine = self._engine
        more = True
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
                    self._submit(got)
            if not more and (not self._parts or engine.stopped):
                return
            self._handle(self._messages(timeout))

    def _messages(self, timeout: float | None) -> list[tuple[str, Any]]:
        try:
            msgs = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                msgs.append(self._inbox.get_nowait())
            except queue.Empty:
                return msgs

    def _submit(self, task: Task) -> None:
        record = _Record(task)
        self._records[task.seq] = record
        self._submit_part(record, task.done, len(task.items) - task.done)

    def _submit_part(self, record: _Record, offset: int, count: int) -> None:
        items = record.task.items[offset : offset + count]
        key = f"{self._key_prefix}-{next(self._keys)}"
        future = self._client.submit(_run_part, self._job_future, _Chunk(items), key=key,
                                     pure=False)
        self._parts[future.key] = _Part(record, offset, count, future)
        record.parts += 1
        future.add_done_callback(self._on_done)

    def _on_done(self, future: Any) -> None:  # on Dask's callback thread
        self._inbox.put(("done", future))

    def _handle(self, msgs: list[tuple[str, Any]]) -> None:
        finished: list[_Part] = []
        for kind, payload in msgs:
            if kind == "done":
                part = self._parts.pop(payload.key, None)
                if part is None:
                    continue  # abandoned after a timeout, or already handled
                if payload.status == "finished":
                    finished.append(part)
                else:
                    self._failed(part, _future_error(payload))
            elif kind == "abandon":
                self._drop(payload)
        if finished:
            self._collect(finished)

    def _collect(self, parts: list[_Part]) -> None:
        """Fetch the replies of finished parts (one round trip for all of them)."""
        try:
            replies: list[_Reply] = self._client.gather([p.future for p in parts])
        except Exception:
            # One of them could not be fetched: find which, one at a time.
            for part in parts:
                try:
                    reply = part.future.result()
                except Exception as exc:
                    self._failed(part, exc)
                else:
                    self._received(part, reply)
            return
        for part, reply in zip(parts, replies, strict=True):
            self._received(part, reply)

    def _received(self, part: _Part, reply: _Reply) -> None:
        if reply.init_error is not None:
            self._engine.fail_run(_restore(*reply.init_error))
            return
        errors = None
        if reply.errors is not None:
            errors = {k: _restore(exc, tb) for k, (exc, tb) in reply.errors.items()}
        if self._sizer is not None and self._sizer.observe(len(reply.values), reply.duration):
            self._resize(self._sizer.chunk)
        self._report(part, Outcome(reply.values, errors, reply.duration, reply.worker))

    def _failed(self, part: _Part, exc: BaseException) -> None:
        """A future erred on its own (``fn`` raising never gets here)."""
        cancelled = isinstance(exc, (CancelledError, AsyncioCancelledError))
        if cancelled and self._client.status not in ("running", "connecting"):
            raise BrokenBackend(
                f"lost the connection to the Dask scheduler ({self._client.status})"
            ) from exc
        record = part.record
        if not _worker_lost(exc, self._distributed):
            # The task itself cannot run on the cluster (fn or an item does not
            # unpickle there, ...): each of its items fails with that error.
            tb = _format_tb(part.future)
            n = part.count
            failures = {k: _restore(exc, tb) for k in range(n)}
            self._report(part, Outcome([None] * n, failures, 0.0, ""))
        elif part.count > 1:
            # Which item killed the worker is unknown: run them one by one, so
            # only the guilty one fails and the others are not even retried.
            record.parts -= 1
            for k in range(part.count):
                self._submit_part(record, part.offset + k, 1)
        else:
            last = getattr(getattr(exc, "last_worker", None), "address", "")
            index = record.task.start + part.offset
            error = WorkerCrashed(
                f"item {index}: the Dask worker running it died or was lost ({exc})"
            )
            error.__cause__ = exc
            self._report(part, Outcome([None], {0: error}, 0.0, str(last or "")))

    def _report(self, part: _Part, outcome: Outcome) -> None:
        """Give the engine every outcome of the record that is next in order."""
        record = part.record
        record.parts -= 1
        record.ready[part.offset] = outcome
        task = record.task
        while record.next in record.ready:
            done = record.ready.pop(record.next)
            record.next += len(done.values)
            self._engine.complete(task, done)
        if record.parts == 0 and record.next >= len(task.items):
            del self._records[task.seq]

    def _drop(self, task: Task) -> None:
        """The engine gave up on ``task`` (timeout): cancel what still runs."""
        record = self._records.pop(task.seq, None)
        if record is None:
            return
        doomed = [p for p in self._parts.values() if p.record is record]
        for part in doomed:
            del self._parts[part.future.key]
        if doomed:
            self._client.cancel([p.future for p in doomed])

    def _disconnect(self) -> None:
        """Cancel what is left and close what shoal opened (feeder thread)."""
        steps: list[tuple[str, Callable[[], Any]]] = []
        client, cluster = self._client, self._cluster
        if client is not None:
            pending = [p.future for p in self._parts.values()]
            self._parts.clear()
            self._records.clear()
            if pending:
                steps.append(("cancel the remaining tasks", lambda: client.cancel(pending)))
            job = self._job_future
            if job is not None:
                steps.append(("release the scattered function", job.release))
            if self._given_client is None:
                steps.append(("close the Dask client", client.close))
        if cluster is not None:
            steps.append(("close the LocalCluster", cluster.close))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # cleanup goes on; the failure is reported
                warnings.warn(f"shoal: could not {what}: {exc!r}", RuntimeWarning, stacklevel=1)
        self._client = self._cluster = self._job_future = None


def _check_backend_options(extra: Mapping[str, Any]) -> None:
    """Validate ``backend_options`` for the Dask backend.

    Raises:
        InvalidOptionError: an unknown key or a value of the wrong kind.
    """
    unknown = sorted(set(extra) - set(_BACKEND_OPTIONS))
    if unknown:
        raise InvalidOptionError(
            f'backend="dask" does not know backend_options {", ".join(map(repr, unknown))}; '
            f"known: {', '.join(_BACKEND_OPTIONS)}"
        )
    per_thread = extra.get("tasks_per_thread", 2)
    if isinstance(per_thread, bool) or not isinstance(per_thread, int) or per_thread < 1:
        raise InvalidOptionError(
            f"backend_options tasks_per_thread must be an int >= 1, got {per_thread!r}"
        )
    kwargs = extra.get("cluster_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidOptionError(
            f"backend_options cluster_kwargs must be a dict of LocalCluster arguments, "
            f"got {kwargs!r}"
        )


def _future_error(future: Any) -> BaseException:
    """The exception of an erred or cancelled future."""
    try:
        exc = future.exception()
    except (CancelledError, AsyncioCancelledError) as cancelled:
        return cancelled
    if exc is None:  # status said "cancelled"/"lost" but no exception is stored
        return CancelledError(f"Dask future {future.key} ended as {future.status!r}")
    return exc  # type: ignore[no-any-return]


def _worker_lost(exc: BaseException, distributed: Any) -> bool:
    return isinstance(exc, (distributed.KilledWorker, CancelledError, AsyncioCancelledError))


def _format_tb(future: Any) -> str:
    try:
        tb = future.traceback()
    except Exception:  # the traceback is a nicety; the error itself is reported
        return ""
    return "".join(traceback.format_tb(tb)) if tb is not None else ""
