"""The Dask backend: the engine's tasks run as futures on a Dask cluster.

Two driver threads share the work; each owns its state, and they talk only
through queues::

    engine.acquire() ─Task─▶ feeder ──client.submit(run_part | run_isolated)──▶ cluster
         ▲                    │  ▲                                                │
         └─ engine.complete ◀─┘  └─ inbox ◀─ collector ◀─ finished futures ◀──────┘
            engine.lost              ▲        (bounded gather, unpickle)
            engine.release           └── "wake" (engine), "abandon" (consumer)

The feeder owns the futures in flight and every call to the engine; the
collector (``collector``) only fetches and unpickles results, every wait
bounded, so the feeder never waits on the network. What runs on the workers
is in ``worker`` (chunks) and ``quarantine`` (isolated items).

* Bounded: at most ``tasks_per_thread`` (2) x worker threads futures are in
  flight; the feeder acquires a task only when one finishes, so generators
  stream and the scheduler never holds more than that window.
* ``fn`` is pickled once per run; items and replies travel as one pickle per
  chunk (a reply's values of builtin types as one marshal blob).
* Chunk sizes: the one ``ChunkPolicy`` with this backend's ``ChunkParams``
  (planned again once the cluster's threads are known), fed by the engine.
  What is Dask's own is the *probe*: until a reply measured an item, one
  task per thread, each of up to ``PROBE_ITEMS`` items that runs its first
  item and then more only for ``PROBE_SECONDS``; the items it did not reach
  go out again in chunks of the size the policy then chose.
* Crash isolation is the engine's rule: a future lost with its worker
  (``KilledWorker``), or a reply that cannot be decoded, is reported with
  ``engine.lost``; the engine hands its items back one by one as *isolated*
  tasks, which run in batches as ``run_isolated``: each item in turn in a
  fresh child process of the worker, so a death names its item exactly
  (``exact=True``) and costs no other task.
* ``abandon`` (timeout) lets go of the future. Dask cannot stop a running
  thread: the worker runs the hung call to its end, one thread short
  meanwhile (an isolated item's process is killed). With a timeout the
  window is one task per thread, because the clock starts at submission.

Which client a run uses is decided in ``client``. ``backend_options``:
``client`` (an open ``distributed.Client``), ``cluster_kwargs`` (for the
``LocalCluster`` started when no ``address`` is given), ``tasks_per_thread``.
See docs/dask.md.
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
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from shoal._backends._base import Backend
from shoal._backends._dask.client import (
    ClusterWatch,
    Connection,
    connect,
    current_client,
    gather_direct,
    import_distributed,
    wait_for_threads,
)
from shoal._backends._dask.collector import Collector, Unfetchable
from shoal._backends._dask.inflight import InFlight, Isolated, Part, Record
from shoal._backends._dask.quarantine import IsolatedReply, run_isolated
from shoal._backends._dask.settings import (
    PROBE_SECONDS,
    TRAITS,
    check_main_guard,
    pickle_job,
    probe_size,
    read_backend_options,
)
from shoal._backends._dask.worker import Pickled, Reply, dumps, run_part, unpack
from shoal._core import planner, wire
from shoal._core.calling import Outcome
from shoal._core.engine import Wait, Work
from shoal._core.errors import (
    BrokenBackend,
    NotPicklable,
    ShoalError,
    WorkerCrashed,
    describe_exit,
)
from shoal._core.options import Options
from shoal._core.wire import _rebuild as attach_remote_traceback  # one way to attach it

if TYPE_CHECKING:
    from shoal._backends._dask.warm import DaskWorkers
    from shoal._core.engine import Engine, Task

#: seconds to wait for a first worker to join (workers may be restarting)
WORKERS_TIMEOUT = 10.0
#: times a part whose result could not be fetched is sent again
RESENDS = 2


class DaskBackend(Backend):
    """Tasks as Dask futures on an existing cluster (``address=``) or a local one.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
        InvalidOptionError: ``backend_options`` it does not understand, or
            ``max_items_per_worker`` (not supported).
        NotPicklable: ``fn`` or the initializer cannot be pickled.
        BrokenBackend: a script would start a LocalCluster from top-level
            code that is not under ``if __name__ == "__main__":``.
    """

    traits = TRAITS

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int,
                 warm: DaskWorkers | None = None) -> None:
        super().__init__(fn, options, workers)
        self._distributed = import_distributed()
        self._warm = warm
        settings = read_backend_options(options)
        self._given_client: Any = settings["client"]
        self._cluster_kwargs: Mapping[str, Any] = settings["cluster_kwargs"]
        self._tasks_per_thread: int = settings["tasks_per_thread"]
        # Looked up here, on the caller's thread: a client made current with
        # as_current() is current only in the caller's context, and the
        # caller's frames show whether a script guards its top-level code.
        self._current: Any = None
        if warm is None:
            self._current = (current_client(self._distributed)
                             if options.address and self._given_client is None else None)
            check_main_guard(options, self._given_client,
                             self._cluster_kwargs)
        token = uuid.uuid4().hex[:12]
        initializer = (options.initializer, options.initargs, token) if warm is None else (
            warm.initializer, warm.initargs, warm.token)
        self._job = Pickled(pickle_job(fn, *initializer), token)
        label = re.sub(r"\W+", "_", getattr(fn, "__name__", type(fn).__name__)).strip("_")
        self._key_prefix = f"shoal-{label or 'fn'}-{token}"  # Dask's dashboard groups by it
        self._closing = False
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        self._collector: Collector | None = None
        self.closer: threading.Thread | None = None  # closes the client to an address
        # Owned by the feeder thread (others only use _inbox and set _closing):
        self._connection: Connection | None = None
        self._client: Any = None  # the connection's client
        self._watch: ClusterWatch | None = None
        self._window = 1
        self._probing = False  # no reply has measured an item yet: probes, one per thread
        self._keys = itertools.count()

    # ------------------------------------------------------------- consumer
    def start(self, engine: Engine) -> None:
        # Connecting (or starting a LocalCluster) takes a second or more: the
        # feeder does it, so an async consumer's event loop never blocks. A
        # failure reaches the consumer through engine.fail_run.
        self._engine = engine
        self._flight = InFlight(engine)
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
        """Connect to the cluster (or start one), then plan chunks and the window.

        Raises:
            BrokenBackend: the scheduler cannot be reached or has no workers.
        """
        if self._warm is not None:
            self._connection = self._warm.connection()
        else:
            self._connection = connect(self._distributed, self.options.address,
                                       self._given_client, self._current, self.workers,
                                       self._cluster_kwargs)
        self._client = self._connection.client
        threads = wait_for_threads(self._client, WORKERS_TIMEOUT)
        # workers= caps how many items run at once on the cluster's threads:
        # then one task per worker, since Dask may start a queued task on
        # another thread.
        capped = self.options.workers is not None and self.options.workers < threads
        if capped:
            threads = self.options.workers  # type: ignore[assignment]
        self.workers = threads  # reported in the BatchReport
        direct = gather_direct(self._client, self._connection.cluster is not None)
        self._collector = Collector(self._client, direct, _decode, self._inbox.put)
        self._collector.start()
        self._watch = ClusterWatch(self._connection)
        per_thread = 1 if self.options.timeout is not None or capped else self._tasks_per_thread
        self._window = per_thread * threads
        # The run planned for the workers it was told of; plan again for the
        # threads the cluster has. An adaptive policy starts at the probes' size.
        engine = self._engine
        left = None if engine.total is None else engine.total - engine.pulled
        plan = planner.plan(self.options, self.traits, left, threads)
        if plan.chunks.adaptive:
            self._probing = True
            plan.chunks.size = probe_size(plan.chunks, left, threads)
        engine.set_chunks(plan.chunks, plan.window)

    def _room(self) -> bool:
        """A task may be submitted now; while probing, one per worker thread."""
        return len(self._flight.parts) < (self.workers if self._probing else self._window)

    def _loop(self) -> None:
        engine, flight, more = self._engine, self._flight, True
        while not self._closing:
            timeout: float | None = None  # None: until a message arrives
            isolated: list[Record] = []  # isolated tasks acquired together run together
            while (more or flight.pending) and self._room() and not self._closing:
                if flight.pending:  # items a probe did not reach go first
                    self._submit(*flight.pending.popleft())
                    continue
                got = engine.acquire()
                if isinstance(got, Wait):
                    timeout = None if math.isinf(got.seconds) else got.seconds
                    break
                if not isinstance(got, Work):
                    more = False  # DONE
                    continue
                record = flight.track(got.task)
                if got.task.isolated:
                    isolated.append(record)
                    if len(isolated) >= engine.chunk:
                        self._isolate(isolated)
                        isolated = []
                    continue
                if isolated:
                    self._isolate(isolated)
                    isolated = []
                self._submit(record, record.next, len(record.task.items) - record.next)
            if isolated:
                self._isolate(isolated)
            if not more and (not (flight.parts or flight.pending) or engine.stopped):
                return
            self._handle(self._wait(timeout))

    def _wait(self, timeout: float | None) -> list[tuple[str, Any]]:
        """The next messages, waiting up to ``timeout`` s (None: until one comes);
        while tasks are in flight, the cluster is looked after (``ClusterWatch``)."""
        if self._flight.parts:
            assert self._watch is not None
            due = self._watch.look_if_due(len(self._flight.parts))
            timeout = due if timeout is None else min(timeout, due)
        try:
            msgs = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._inbox.empty():
            msgs.append(self._inbox.get())
        return msgs

    def _submit(self, record: Record, offset: int, count: int, resent: int = 0) -> None:
        items = record.task.items[offset : offset + count]
        try:
            blob = dumps(items)
        except Exception as exc:
            self._submit_around_culprits(record, offset, count, exc)
            return
        args: tuple[Any, ...] = (self._job, Pickled(blob))
        stop = self.options.on_error == "all_or_nothing"
        if self._probing or stop:
            args += (PROBE_SECONDS if self._probing else None, stop)
        future = self._client.submit(run_part, *args, key=self._key(), pure=False)
        self._flight.add(Part(record, offset, count, future, len(blob), resent))
        assert self._collector is not None
        self._collector.watch(future)

    def _submit_around_culprits(self, record: Record, offset: int, count: int,
                                error: Exception) -> None:
        """The items do not pickle together: those that do not pickle alone fail,
        the runs of others between them are sent as parts of their own."""
        items = list(record.task.items[offset : offset + count])
        bad = wire.unpicklable(items, "the item", by_value=True)
        if not bad:  # none alone: the list itself is the trouble (too deep...): all fail
            bad = dict.fromkeys(range(count), NotPicklable(
                f"items {record.task.start + offset} to {record.task.start + offset + count - 1}"
                f" cannot be pickled to send them to a Dask worker: {error!r}"))
        run_start: int | None = None
        for k in range(count + 1):
            if k < count and k not in bad:
                run_start = k if run_start is None else run_start
                continue
            if run_start is not None:
                self._submit(record, offset + run_start, k - run_start)
                run_start = None
            if k < count:
                record.parts += 1
                self._flight.report(Part(record, offset + k, 1),
                                    Outcome([None], {0: bad[k]}, 0.0, ""))

    def _isolate(self, records: list[Record], resent: int = 0) -> None:
        """Run isolated one-item tasks in turn, each in a process of its own (``quarantine``)."""
        blobs: list[bytes] = []
        kept: list[Record] = []
        for record in records:
            item = record.task.items[record.next]
            try:
                blobs.append(dumps(item))
                kept.append(record)
            except Exception:
                error = wire.unpicklable([item], "the item", by_value=True).get(0)
                self._flight.finish(record, Outcome([None], {0: error or NotPicklable(
                    "the item cannot be pickled")}, 0.0, ""))
        if not kept:
            return
        future = self._client.submit(
            run_isolated, self._job, Pickled(pickle.dumps(blobs, wire.PICKLE_PROTOCOL)),
            self.options.timeout, key=self._key(), pure=False)
        self._flight.add(Isolated(kept, future, resent))
        assert self._collector is not None
        self._collector.watch(future)

    def _key(self) -> str:
        return f"{self._key_prefix}-{next(self._keys)}"

    # -------------------------------------------------------------- replies
    def _handle(self, msgs: list[tuple[str, Any]]) -> None:
        for kind, payload in msgs:
            if kind == "abandon":
                self._flight.drop(payload)
            elif kind == "broken":
                raise BrokenBackend(f"fetching results from Dask failed: {payload!r}") from payload
            elif kind == "fetched":
                assert self._watch is not None
                self._watch.heard()
                for future, reply, exc, nbytes in payload:
                    part = self._flight.parts.pop(future.key, None)
                    if part is None:
                        continue  # let go of (a timeout, a lost record)
                    if isinstance(exc, Unfetchable):
                        self._resend(part, exc)
                    elif isinstance(part, Isolated):
                        self._isolated_done(part, reply, exc)
                    elif exc is None:
                        self._received(part, reply, nbytes)
                    else:
                        self._failed(part, exc)

    def _received(self, part: Part, reply: Reply, nbytes: int) -> None:
        if reply.init_error is not None:
            self._engine.fail_run(reply.init_error)
            return
        if reply.unreadable is not None:
            error = NotPicklable(f"item(s) could not be unpickled on the Dask worker "
                                 f"{reply.worker}: {reply.unreadable!r}")
            self._lose(part, error, exact=part.count == 1)
            return
        ran = len(reply.values)
        if self._probing and ran > len(reply.errors or ()):
            self._probing = False  # an item was timed: the policy sizes chunks from now on
        item_bytes = max(part.nbytes / part.count, nbytes / max(ran, 1))
        self._flight.report(part, Outcome(reply.values, reply.errors, reply.duration,
                                          reply.worker, stopped=reply.stopped,
                                          item_bytes=item_bytes))
        if ran < part.count and not reply.stopped:  # a probe stopped at its time budget
            step = max(1, self._engine.chunk)  # what the policy chose from its timing
            end = part.offset + part.count
            for offset in range(part.offset + ran, end, step):
                self._flight.pending.append((part.record, offset, min(step, end - offset)))

    def _failed(self, part: Part, exc: BaseException) -> None:
        """The future erred by itself (``fn`` raising never gets here), or its
        reply could not be decoded."""
        first, last = part.record.task.start + part.offset, part.record.task.start + part.offset \
            + part.count - 1
        if isinstance(exc, _Undecodable):
            self._lose(part, NotPicklable(f"a result of items {first} to {last} could not be "
                                          f"unpickled in the driver: {exc}"),
                       exact=part.count == 1)
        elif isinstance(exc, self._lost_errors()):
            self._check_connection(exc)
            crash = WorkerCrashed(f"items {first} to {last}: the Dask worker running them "
                                  f"died or was lost ({exc})")
            crash.__cause__ = exc
            self._lose(part, crash, exact=False)
        else:
            # The task cannot run on the cluster at all (run_part does not
            # import there, ...): each of its items fails with that error.
            failure = attach_remote_traceback(exc, _format_tb(part.future))
            self._flight.report(part, Outcome([None] * part.count,
                                              dict.fromkeys(range(part.count), failure), 0.0, ""))

    def _lose(self, part: Part, error: BaseException, exact: bool) -> None:
        """The engine's crash-isolation rule decides what runs again.

        ``exact``: the part is a single item; it is known to be the one to
        blame only if no item before it in its task is still unreported.
        """
        record = part.record
        self._flight.discard(record)
        self._engine.lost(record.task, error, exact=exact and part.offset == record.next)

    def _isolated_done(self, part: Isolated, reply: IsolatedReply | None,
                       exc: BaseException | None) -> None:
        if exc is not None:
            self._isolated_failed(part, exc)
            return
        assert reply is not None
        if reply.init_error is not None:
            self._engine.fail_run(reply.init_error)
            return
        for record, blob in zip(part.records, reply.outcomes, strict=False):
            self._flight.finish(record, _isolated_outcome(blob, reply.worker))
        rest = part.records[len(reply.outcomes):]
        if not rest:
            return
        guilty, after = rest[0], rest[1:]
        index = guilty.task.start + guilty.next
        if not reply.started:
            self._engine.fail_run(BrokenBackend(
                f"the process that runs isolated items on Dask worker {reply.worker} "
                f"{describe_exit(reply.exitcode or 0)} before running any; check the "
                "initializer and what unpickling fn imports"))
            return
        self._flight.forget(guilty)
        if reply.exitcode is not None:
            self._engine.lost(guilty.task, WorkerCrashed(
                f"item {index}: the process running it alone on Dask worker {reply.worker} "
                f"{describe_exit(reply.exitcode)}", reply.exitcode), exact=True)
        elif reply.timed_out:  # the engine timed it out already: this is only a fallback
            self._engine.lost(guilty.task, TimeoutError(
                f"item {index} did not finish within timeout={self.options.timeout}s"),
                exact=True)
        else:
            self._engine.release(guilty.task)  # cancelled under it: it runs again
        for record in reversed(after):  # released in reverse: they run again in order
            self._flight.forget(record)
            self._engine.release(record.task)

    def _isolated_failed(self, part: Isolated, exc: BaseException) -> None:
        """The worker running isolated items was lost (not an item's own
        process), or their reply could not be decoded, or ``run_isolated`` failed."""
        lost = isinstance(exc, self._lost_errors())
        if lost:
            self._check_connection(exc)
        elif not isinstance(exc, _Undecodable):  # it cannot run there at all (see _failed)
            failure = attach_remote_traceback(exc, _format_tb(part.future))
            for record in part.records:
                self._flight.finish(record, Outcome([None], {0: failure}, 0.0, ""))
            return
        if len(part.records) > 1:  # one at a time now: the one to blame is found
            for record in part.records:
                self._isolate([record])
            return
        [record] = part.records
        index = record.task.start + record.next
        error: BaseException = NotPicklable(
            f"the result of item {index} could not be unpickled in the driver: {exc}")
        if lost:
            error = WorkerCrashed(f"item {index}: the Dask worker running it alone died or "
                                  f"was lost ({exc!r})")
        self._flight.forget(record)
        self._engine.lost(record.task, error, exact=False)  # isolated: it fails

    def _resend(self, part: Part | Isolated, error: Unfetchable) -> None:
        """A result that could not be fetched: its part runs again (no attempt counted)."""
        part.future.release()
        if part.resent >= RESENDS:
            raise BrokenBackend(f"{error}, and as often again after running it again; "
                                "check that this machine can reach the Dask workers")
        if isinstance(part, Isolated):
            self._isolate(part.records, part.resent + 1)
            return
        part.record.parts -= 1
        self._submit(part.record, part.offset, part.count, part.resent + 1)

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        return (self._distributed.KilledWorker, CancelledError, AsyncioCancelledError)

    def _check_connection(self, exc: BaseException) -> None:
        if self._client.status not in ("running", "connecting"):
            raise BrokenBackend(
                f"lost the connection to the Dask scheduler ({self._client.status})"
            ) from exc

    def _disconnect(self) -> None:
        """Let go of what is left and close what shoal opened."""
        connection = self._connection
        self._flight.clear()
        if connection is not None and self._warm is None:
            self.closer = connection.close()
        if self._collector is not None:
            # A fetch under way ends as the client closes; a caller's client
            # stays open, and the collector then ends within GATHER_TIMEOUT.
            self._collector.stop(timeout=5.0)
        self._client = self._connection = None


def _decode(blob: Any) -> Reply | IsolatedReply:
    """A fetched reply: a chunk's ``Reply`` or an ``IsolatedReply``.

    Raises:
        _Undecodable: it cannot be unpickled here.
    """
    try:
        reply: Reply | IsolatedReply = unpack(blob)
    except Exception as exc:
        raise _Undecodable(f"{type(exc).__name__}: {exc}") from exc
    return reply


class _Undecodable(Exception):
    """A reply that could not be unpickled in the driver."""


def _isolated_outcome(blob: bytes, worker: str) -> Outcome:
    """One isolated item's outcome, decoded on its own: if it cannot be, it fails alone."""
    try:
        value, error, seconds = pickle.loads(blob)
    except Exception as exc:
        value, seconds = None, 0.0
        error = NotPicklable(f"the result could not be unpickled in the driver: "
                             f"{type(exc).__name__}: {exc}")
    return Outcome([value], None if error is None else {0: error}, seconds, worker)


def _format_tb(future: Any) -> str:
    try:
        tb = future.traceback(timeout=5)
    except Exception:  # the traceback is a nicety: the error itself is reported
        return ""
    return "".join(traceback.format_tb(tb)) if tb is not None else ""
