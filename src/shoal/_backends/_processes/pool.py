"""The process backend: workers in child processes, forked from a fork server.

Data flow (one *hub* thread in the driver does all the I/O, on non-blocking sockets)::

    driver: consumer thread    driver: hub thread            child processes
    ───────────────────────    ──────────────────            ───────────────
                               Engine.acquire()
                                 └▶ pickle chunk ──socket──▶ worker: run_chunk(fn, items)
    take() ◀── Engine ◀── complete(Outcome)                       │
                                 ▲ unpickle ◀────socket──── results: one frame per chunk
                                                              (stream mode: one per item)
    abandon(), shutdown()
      └▶ inbox ─▶ hub ── SPAWN / KILL / QUIT ──control──▶ fork server ──fork──▶ worker
                  hub ◀── SPAWNED + socket fd, EXITED(code) ──┘

**Start method.** Workers are forked from a per-pool *fork server*, itself
forked from the driver when the driver is single-threaded and started with
exec otherwise: ``_procworker.py`` says why and what each costs, and how no
process outlives the pool.

**Crash isolation.** The fork server reaps workers and reports each exit code
(negative: a signal). A worker that dies fails the item it was running with
``WorkerCrashed``; its other items are released to run again. In *stream*
mode (a timeout is set, or the chunk is being re-run after a crash) a worker
reports each item as it finishes, so the running item is known exactly and
each report restarts the engine's deadline. In *batch* mode (the fast path:
one frame per chunk) a crash in a chunk of several items cannot be pinned on
one item: the chunk is released and re-run in stream mode, where the culprit
crashes again and fails alone. Items before it in that chunk run twice (their
results died with the worker); an item that crashed once and not again fails
nothing.

**Chunking.** With ``chunk_size="auto"`` the first chunks hold one item; from
the measured item time ``ChunkSizer`` (``_chunk_sizer.py``) grows them
towards ~20 ms of work while keeping, when the number of items is known, four
chunks per worker of what remains, so the last chunks finish together, and
keeping each chunk's pickle small enough to sit whole in the worker socket's
buffer (asked for 1 MiB each way). Without a timeout each worker has one
chunk queued behind the running one, so it never waits for the driver, and it
writes its results without waiting for the driver to read them. A queued
chunk never waits behind a slow one while a worker is idle: a worker that goes
idle when the engine has nothing to hand out *steals* a chunk queued behind a
busy worker, if that worker has not started it (the claim pipe in
``_wire.py`` decides, without either side waiting), and runs it instead.
Tiny items cost the driver one pickle of the chunk and one unpickle of its
results; values stay in the engine's
columns, with no per-item object. For them the driver is the bottleneck:
pulling items, pickling and unpickling (about 100 ns an item) and, while the
fork server shares its pages, copy-on-write faults.
"""

from __future__ import annotations

import itertools
import math
import os
import selectors
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shoal._backends._base import Backend, Traits, cpu_count
from shoal._backends._processes.child import ForkServerHandle, describe_exit, start_fork_server
from shoal._backends._processes.protocol import (
    BATCH_DONE,
    FATAL,
    ITEM_DONE,
    OP_EXITED,
    OP_KILL,
    OP_QUIT,
    OP_SPAWN,
    OP_SPAWN_FAILED,
    OP_SPAWNED,
    READY,
    RECORD,
    RUN_BATCH,
    RUN_STREAM,
    UNREADABLE,
    ControlReader,
    FrameReader,
    FrameWriter,
    load_error,
    load_result,
    pickle_items,
    put_ticket,
    take_ticket,
    worker_payload,
)
from shoal._core.calling import Outcome
from shoal._core.engine import Wait, Work
from shoal._core.errors import BackendUnavailable, BrokenBackend, NotPicklable, WorkerCrashed
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal._core.engine import Engine, Task

#: a pool whose workers die this many times in a row before they are ready is broken
MAX_STARTUP_DEATHS = 3
#: how long shutdown waits for the fork server to exit before it kills it
GRACEFUL_EXIT_SECONDS = 5.0
CANCEL_EXIT_SECONDS = 1.0

WorkerState = Literal["live", "retiring", "killed"]


@dataclass(slots=True, eq=False)
class _Sent:
    """Items of one task sent to a worker in one frame."""

    task: Task
    ticket: int  # its number on the worker, in the claim pipe until the worker starts it
    count: int  # items sent (from task.done at sending time) and not yet reported
    stream: bool  # the worker reports each item as it finishes
    release_rest: bool  # after these items, give the task's unsent items back


class _Worker:
    """The driver's view of one worker process. Owned by the hub thread."""

    __slots__ = ("claim_r", "claim_w", "claimed", "events", "label", "out", "pid", "quota",
                 "reader", "ready", "sends", "sock", "state", "tickets")

    def __init__(self, pid: int, sock: socket.socket, claim: tuple[int, int],
                 quota: int | None) -> None:
        self.pid = pid
        self.label = f"pid:{pid}"
        self.sock: socket.socket | None = sock
        self.claim_r, self.claim_w = claim  # both ends of its claim pipe (see _wire.py)
        self.tickets = 0  # the last ticket issued
        self.claimed = 0  # every ticket up to this one is known to be taken by the worker
        self.reader = FrameReader()
        self.out = FrameWriter()  # frames not yet written
        self.events = selectors.EVENT_READ
        self.sends: deque[_Sent] = deque()  # in the order the worker runs them
        self.ready = False
        self.state: WorkerState = "live"
        self.quota = quota  # items it may still be sent (max_items_per_worker)


class ProcessBackend(Backend):
    """Child processes for CPU-bound work, isolated from each other's crashes."""

    traits = Traits(
        "processes", default_workers=cpu_count, streams_items=True, isolates_crashes=True,
        dispatcher_reads_results=True,
        # A chunk costs a pickle each way and a socket write: ~20 ms of work
        # makes that small; its pickle stays under a socket buffer's worth.
        chunking=ChunkParams(target_seconds=0.02, min_seconds=0.002, growth=8.0,
                             chunks_per_worker=4, max_items=1 << 16, max_bytes=1 << 17),
    )

    def __init__(self, fn: Callable[[Any], Any], options: Options, workers: int) -> None:
        """Pickle ``fn`` (and the initializer) once, before anything runs.

        Raises:
            NotPicklable: ``fn``, the initializer or its arguments cannot be
                pickled (with cloudpickle) to cross to the worker processes.
            BackendUnavailable: not a POSIX system.
        """
        super().__init__(fn, options, workers)
        if not hasattr(os, "fork"):
            raise BackendUnavailable(
                'backend="processes" needs a POSIX system (os.fork); use backend="threads"'
            )
        self._payload = worker_payload(fn, options.initializer, options.initargs)
        self._server: ForkServerHandle | None = None
        self._hub_thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self, engine: Engine) -> None:
        """Start the fork server, ask it for the workers and start the hub.

        Raises:
            BrokenBackend: the fork server could not be started.
        """
        self._engine = engine
        self._server = start_fork_server(self._payload)
        self._by_value = self._server.by_exec  # the workers' __main__ is not ours
        self._stream_all = self.options.timeout is not None
        # Without a timeout a worker gets its next chunk while it runs one; with
        # one, a queued chunk's deadline would run before the chunk does.
        self._depth = 1 if self._stream_all else 2
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._sel.register(self._server.control, selectors.EVENT_READ, None)
        # The hub thread owns everything from here to the locks: workers,
        # sockets, the selector, suspects and the control read buffer.
        self._workers: dict[int, _Worker] = {}
        self._tokens = itertools.count(1)
        self._in_bytes = 0.0  # pickled bytes per item sent, of the last chunk
        self._out_bytes = 0.0  # pickled bytes per result, of the last chunk
        self._startup_deaths = 0
        self._control = ControlReader()
        self._hub_ident: int | None = None
        # _inbox_lock guards _inbox and _closing: consumer threads write them, the hub reads.
        self._inbox_lock = threading.Lock()
        self._inbox: list[Task] = []  # tasks to abandon
        self._closing: Literal["graceful", "cancel"] | None = None
        # _control_lock guards writes to the control socket (hub: spawn, kill;
        # shutdown: quit). Only the hub reads it.
        self._control_lock = threading.Lock()
        for _ in range(self.workers):
            self._spawn()
        self._hub_thread = threading.Thread(target=self._hub, name="shoal-processes", daemon=True)
        self._hub_thread.start()

    def resize(self, workers: int) -> None:
        for _ in range(workers - len(self._workers)):
            self._spawn()
        self.workers = workers
        self.wake(False)

    def abandon(self, task: Task) -> None:
        """``task`` timed out: SIGKILL its worker and start a replacement."""
        with self._inbox_lock:
            self._inbox.append(task)
        self.wake()

    def shutdown(self, cancel: bool) -> None:
        """Stop the pool and reap every process it started.

        ``cancel``: SIGKILL the workers now (Ctrl-C, a failed batch) instead of
        letting idle workers exit on their own.
        """
        server = self._server
        if server is None or self._hub_thread is None:
            return
        with self._inbox_lock:
            if self._closing is not None:
                return
            self._closing = "cancel" if cancel else "graceful"
        if cancel:
            self._send_control(OP_QUIT, 1)  # the fork server SIGKILLs and reaps the workers
        self.wake()
        limit = CANCEL_EXIT_SECONDS if cancel else GRACEFUL_EXIT_SECONDS
        self._hub_thread.join(limit)
        if not server.wait(limit):
            server.kill()  # on Linux its workers follow it (parent-death signal)
            server.wait(limit)
        if not self._hub_thread.is_alive():  # else it closes them when it is done
            with self._control_lock:
                server.control.close()
            self._wake_r.close()
            self._wake_w.close()

    # ---------------------------------------------------------------- hub
    def wake(self, everyone: bool = False) -> None:
        # One hub serves every worker: ``everyone`` changes nothing.
        if threading.get_ident() == self._hub_ident:
            return  # the hub dispatches again after every event anyway
        try:
            self._wake_w.send(b"\0")
        except OSError:  # a wake-up is already pending (buffer full), or we are closed
            pass

    def _hub(self) -> None:
        self._hub_ident = threading.get_ident()
        try:
            while True:
                with self._inbox_lock:
                    abandoned, self._inbox = self._inbox, []
                    closing = self._closing
                if closing is not None:
                    self._close(closing)
                    return
                for task in abandoned:
                    self._abandon(task)
                timeout = self._dispatch()
                for key, mask in self._sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.data is None:
                        self._on_control()
                    else:
                        self._on_worker(key.data, mask)
        except BaseException as exc:
            # A bug here must not hang the run: fail it and stop the workers.
            error = BrokenBackend(f"the process pool's hub failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._engine.fail_run(error)
            self._send_control(OP_QUIT, 1)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch(self) -> float | None:
        """Hand tasks to free workers; the select timeout until the next try."""
        engine = self._engine
        while True:
            worker = self._free_worker()
            if worker is None:
                return None
            got = engine.acquire()
            if isinstance(got, Wait):
                if not worker.sends and self._steal():
                    continue  # the stolen chunk is the engine's again: hand it out
                return None if math.isinf(got.seconds) else got.seconds
            if not isinstance(got, Work):
                return None  # DONE
            self._send(worker, got.task)

    def _free_worker(self) -> _Worker | None:
        best: _Worker | None = None
        for w in self._workers.values():
            if w.state != "live" or not w.ready or len(w.sends) >= self._depth:
                continue
            if w.sock is None:
                continue  # its socket closed (it died): its fds may be another's by now
            if w.quota is not None and w.quota <= 0:
                continue
            if not w.sends:
                return w  # an idle worker first; queue behind a busy one only if none is idle
            best = best or w
        return best

    def _steal(self) -> bool:
        """Take back a chunk queued behind a busy worker's running one, if any
        has not started yet; True if one did: the engine has it again."""
        for w in self._workers.values():
            if (w.state != "live" or w.sock is None or len(w.sends) < 2
                    or w.sends[-1].ticket <= w.claimed):
                continue
            ticket = take_ticket(w.claim_r)
            if ticket is None:  # the worker took every ticket: its chunks have started
                w.claimed = w.sends[-1].ticket
                continue
            sent = next((s for s in w.sends if s.ticket == ticket), None)
            if sent is None:
                continue
            w.sends.remove(sent)
            if w.quota is not None:
                w.quota += sent.count
            self._engine.release(sent.task)  # an isolated task stays isolated
            return True
        return False

    def _send(self, w: _Worker, task: Task) -> None:
        """Send ``task``'s next items to ``w``: up to its quota, up to an unpicklable item."""
        while not task.closed:
            start = task.done
            count = len(task.items) - start
            if w.quota is not None:
                count = min(count, w.quota)
            items = task.items
            if start or count < len(items):
                items = items[start : start + count]
            sendable, body, error = pickle_items(items, task.start + start, self._by_value)
            if sendable == 0:
                assert error is not None
                self._engine.complete(task, Outcome([None], {0: error}, 0.0, "driver"))
                continue  # the item fails alone; try the rest
            stream = self._stream_all or task.isolated
            self._in_bytes = len(body) / sendable
            w.tickets += 1
            put_ticket(w.claim_w, w.tickets)  # before the chunk: the worker looks for it then
            w.sends.append(_Sent(task, w.tickets, sendable, stream,
                                 start + sendable < len(task.items)))
            if w.quota is not None:
                w.quota -= sendable
            self._write(w, RUN_STREAM if stream else RUN_BATCH, body)
            return

    def _write(self, w: _Worker, kind: int, body: bytes) -> None:
        w.out.put(kind, body)
        self._flush(w)

    def _flush(self, w: _Worker) -> None:
        if w.sock is None:
            w.out.clear()
            return
        w.out.flush(w.sock)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if w.out else 0)
        if events != w.events:
            w.events = events
            self._sel.modify(w.sock, events, w)

    # --------------------------------------------------------- worker events
    def _on_worker(self, w: _Worker, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(w)
        if mask & selectors.EVENT_READ and w.sock is not None:
            frames, closed = w.reader.read(w.sock)
            self._handle(w, frames)
            if closed:
                self._detach(w)  # how it ended comes from the fork server (EXITED)

    def _handle(self, w: _Worker, frames: list[tuple[int, bytearray]]) -> None:
        # ITEM_DONE frames of one chunk that arrived together are reported at once.
        part = _Part()
        for kind, body in frames:
            if kind == ITEM_DONE:
                try:
                    v, e, s, c = load_result(body)
                except Exception as exc:
                    part = self._report(w, part)
                    self._lost(w, _undecodable(exc), exact=True)
                    continue
                part.add(v, e, s, c)
                if len(part.values) == w.sends[0].count:
                    part = self._report(w, part)
                continue
            part = self._report(w, part)
            if kind == BATCH_DONE:
                count = w.sends[0].count
                self._out_bytes = len(body) / count
                try:
                    v, e, s, c = load_result(body)
                except Exception as exc:  # one value did not unpickle: find it item by item
                    self._lost(w, _undecodable(exc), exact=count == 1)
                    continue
                part.add(v, e, s, c)
                part = self._report(w, part)
            elif kind == READY:
                w.ready = True
                self._startup_deaths = 0
            elif kind == UNREADABLE:  # the worker could not unpickle the chunk
                self._lost(w, load_error(body), exact=w.sends[0].count == 1)
            elif kind == FATAL:
                w.state = "retiring"  # it exits now; every worker would fail the same way
                self._engine.fail_run(load_error(body))
            else:
                raise RuntimeError(f"unexpected frame kind {kind} from worker pid {w.pid}")
        self._report(w, part)

    def _report(self, w: _Worker, part: _Part) -> _Part:
        """Report the items of ``part`` (the next ones of ``w``'s running
        chunk); return an empty part to gather the next."""
        if not part.values:
            return part
        sent = w.sends[0]
        self._engine.complete(sent.task, Outcome(
            part.values, part.errors or None, part.seconds, w.label, cpu=part.cpu,
            item_bytes=max(self._in_bytes, self._out_bytes)))
        sent.count -= len(part.values)
        if sent.count <= 0:
            w.sends.popleft()
            if sent.release_rest:
                self._engine.release(sent.task)
            self._retire_if_spent(w)
        return _Part()

    def _lost(self, w: _Worker, error: BaseException, exact: bool) -> None:
        """The report of ``w``'s running chunk cannot be read: the engine's
        crash-isolation rule decides what runs again."""
        sent = w.sends.popleft()
        self._engine.lost(sent.task, error, exact=exact or sent.stream)
        self._retire_if_spent(w)

    def _retire_if_spent(self, w: _Worker) -> None:
        if w.quota is not None and w.quota <= 0 and not w.sends:
            w.state = "retiring"  # max_items_per_worker: closing its socket ends it
            self._detach(w)
            self._spawn()

    def _detach(self, w: _Worker) -> None:
        """Stop talking to ``w`` (it is dead, killed or retiring)."""
        if w.sock is not None:
            self._sel.unregister(w.sock)
            w.sock.close()
            w.sock = None
            os.close(w.claim_r)
            os.close(w.claim_w)
        w.out.clear()

    # -------------------------------------------------------- control events
    def _is_closing(self) -> bool:
        with self._inbox_lock:
            return self._closing is not None

    def _spawn(self) -> None:
        if not self._is_closing():
            self._send_control(OP_SPAWN, next(self._tokens))

    def _send_control(self, op: int, a: int, b: int = 0) -> None:
        server = self._server
        if server is None:
            return
        with self._control_lock:
            try:
                server.control.sendall(RECORD.pack(op, a, b))
            except OSError:
                pass  # the fork server is gone; the hub reports it when it reads EOF

    def _on_control(self) -> None:
        assert self._server is not None
        record = self._control.read(self._server.control)
        if record is None:
            self._sel.unregister(self._server.control)
            if not self._is_closing():
                self._engine.fail_run(BrokenBackend(
                    f"the process pool's fork server (pid {self._server.pid}) died; "
                    "its workers died with it"
                ))
            return
        op, a, b, fds = record
        if op == OP_SPAWNED:
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            w = _Worker(b, sock, (fds[1], fds[2]), self.options.max_items_per_worker)
            self._workers[b] = w
            self._sel.register(sock, selectors.EVENT_READ, w)
        elif op == OP_SPAWN_FAILED:
            self._engine.fail_run(BrokenBackend(
                f"cannot start a worker process: {os.strerror(b)}"
            ))
        elif op == OP_EXITED:
            self._on_exit(a, b)

    def _on_exit(self, pid: int, code: int) -> None:
        w = self._workers.pop(pid, None)
        if w is None:
            return
        if w.sock is not None:
            # It has exited: whatever it wrote before is in the socket now.
            frames, _ = w.reader.read(w.sock, drain=True)
            self._handle(w, frames)
            self._detach(w)
        if w.state == "live":
            self._crashed(w, code)

    def _crashed(self, w: _Worker, code: int) -> None:
        if self._is_closing():
            return  # shutdown(cancel=True) killed it: not the item's fault
        engine = self._engine
        how = describe_exit(code)
        sends = list(w.sends)
        w.sends.clear()
        if not w.ready:
            self._startup_deaths += 1
            if self._startup_deaths >= MAX_STARTUP_DEATHS:
                engine.fail_run(BrokenBackend(
                    f"worker processes die while starting (worker pid {w.pid} {how}); "
                    "check the initializer and what unpickling fn imports"
                ))
                return
        if sends:
            running = sends[0]
            task = running.task
            index = task.start + task.done
            error = WorkerCrashed(f"worker pid {w.pid} {how} while running item {index}", code)
            engine.lost(task, error, exact=running.stream or running.count == 1)
            for sent in sends[1:]:
                engine.release(sent.task)
        self._spawn()

    def _abandon(self, task: Task) -> None:
        for w in list(self._workers.values()):
            if w.state == "live" and any(s.task is task for s in w.sends):
                w.state = "killed"
                self._send_control(OP_KILL, w.pid)
                for sent in w.sends:
                    self._engine.release(sent.task)  # the timed-out one is closed already
                w.sends.clear()
                self._detach(w)
                self._spawn()

    def _close(self, how: Literal["graceful", "cancel"]) -> None:
        for w in self._workers.values():
            self._detach(w)  # a worker whose socket closes exits
        if how == "graceful":
            self._send_control(OP_QUIT, 0)  # exit once every worker has
        self._sel.close()
        # Closing the control socket also closes the sockets of workers whose
        # SPAWNED record is still unread in it, so that they exit too.
        assert self._server is not None
        with self._control_lock:
            self._server.control.close()


def _undecodable(exc: BaseException) -> NotPicklable:
    return NotPicklable(
        f"a result could not be unpickled in the driver: {type(exc).__name__}: {exc}")


class _Part:
    """Results of consecutive items of one chunk, gathered from its frames."""

    __slots__ = ("cpu", "errors", "seconds", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.errors: dict[int, BaseException] = {}
        self.seconds = 0.0
        self.cpu: float | None = 0.0

    def add(self, values: list[Any], errors: dict[int, BaseException] | None, seconds: float,
            cpu: float | None) -> None:
        if errors:
            offset = len(self.values)
            self.errors.update({offset + k: e for k, e in errors.items()})
        self.values.extend(values)
        self.seconds += seconds
        self.cpu = None if cpu is None or self.cpu is None else self.cpu + cpu
