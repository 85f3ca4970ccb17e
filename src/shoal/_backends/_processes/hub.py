"""The hub: the one driver thread that does a run's I/O with a pool's processes.

It owns the pool's state (``state.py``) for the length of the run: it hands
the engine's tasks to free workers, starts workers as work needs them, reads
what they report and tells the engine, and learns from the fork server how
each worker ended. Other threads reach it only through ``Hub.wake`` and its
inbox (tasks to abandon, the order to finish). ``pool.py`` draws the data
flow and explains the policies; this module carries them out.
"""

from __future__ import annotations

import math
import selectors
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal._backends._processes.protocol import (
    BATCH_DONE,
    FATAL,
    ITEM_DONE,
    ITEM_STOPPED,
    JOB,
    JOB_FAILED,
    OP_EXITED,
    OP_SPAWN_FAILED,
    OP_SPAWNED,
    READY,
    RUN_BATCH,
    RUN_STREAM,
    UNREADABLE,
    load_error,
    load_result,
    pickle_items,
    put_ticket,
    take_ticket,
)
from shoal._backends._processes.state import PoolState, Sent, Worker
from shoal._core.calling import Outcome
from shoal._core.engine import Wait, Work
from shoal._core.errors import BrokenBackend, NotPicklable, WorkerCrashed, add_note, describe_exit

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal._core.engine import Engine, Task

#: a pool whose workers die this many times in a row before they are ready is broken
MAX_STARTUP_DEATHS = 3


@dataclass(frozen=True, slots=True)
class Job:
    """One run's work, as the workers get it."""

    id: int
    frame: bytes  # the JOB frame's body: fn, pickled once for the run, and the run's flags
    stream_all: bool  # a timeout is set: every item is reported as it finishes
    max_items: int | None  # max_items_per_worker


class Hub:
    """The I/O thread of one run (see the module docstring)."""

    def __init__(self, state: PoolState, engine: Engine, job: Job,
                 limit: Callable[[], int]) -> None:
        self.state = state
        self.engine = engine
        self.job = job
        self.limit = limit  # the run's workers, read at each dispatch (resize changes it)
        server = state.server
        assert server is not None
        # The workers' __main__ is the driver's as it is now only when their
        # fork server was forked from the driver for this very run.
        self.other_main = server.by_exec or state.server_job != job.id
        # Without a timeout a worker gets its next chunk while it runs one; with
        # one, a queued chunk's deadline would run before the chunk does.
        self.depth = 1 if job.stream_all else 2
        # Tasks taken from the engine for a worker that is starting. With a
        # timeout they go back to the engine at once (their deadline must not
        # run while a worker starts): they only tell how many workers to start.
        self.pending: deque[Task] = deque()
        self.in_bytes = 0.0  # pickled bytes per item sent, of the last chunk
        self.out_bytes = 0.0  # pickled bytes per result, of the last chunk
        self.halted = False  # the engine stopped: the stop flag is set
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        # _inbox_lock guards _inbox and _ending: other threads write them, the hub reads.
        self._inbox_lock = threading.Lock()
        self._inbox: list[Task] = []  # tasks to abandon
        self._ending = False
        self.ident: int | None = None
        self.thread = threading.Thread(target=self.run, name="shoal-processes", daemon=True)

    # ------------------------------------------------------ other threads
    def wake(self) -> None:
        if threading.get_ident() == self.ident:
            return  # the hub dispatches again after every event anyway
        try:
            self.wake_w.send(b"\0")
        except OSError:  # a wake-up is already pending (buffer full), or we are closed
            pass

    def abandon(self, task: Task) -> None:
        with self._inbox_lock:
            self._inbox.append(task)
        self.wake()

    def finish(self) -> None:
        """End the run's use of the pool; workers still busy are killed (see ``_end``)."""
        with self._inbox_lock:
            self._ending = True
        self.wake()

    # ---------------------------------------------------------------- loop
    def run(self) -> None:
        self.ident = threading.get_ident()
        state = self.state
        try:
            self.sel.register(self.wake_r, selectors.EVENT_READ, None)
            assert state.server is not None
            if state.server.control.fileno() >= 0 and not state.broken:
                self.sel.register(state.server.control, selectors.EVENT_READ, None)
            for w in state.workers.values():
                if w.sock is not None:
                    self.sel.register(w.sock, w.events, w)
            if state.broken:
                self.engine.fail_run(BrokenBackend(state.broken))
            while True:
                with self._inbox_lock:
                    abandoned, self._inbox = self._inbox, []
                    ending = self._ending
                if ending:
                    self._end()
                    return
                for task in abandoned:
                    self._abandon(task)
                if self.engine.stopped and not self.halted:
                    self._halt()  # before dispatching: a held task must not go out now
                timeout = self._dispatch()
                for key, mask in self.sel.select(timeout):
                    if key.fileobj is self.wake_r:
                        self._drain_wake()
                    elif key.data is None:
                        self._on_control()
                    else:
                        self._on_worker(key.data, mask)
        except BaseException as exc:
            # A bug here must not hang the run: fail it and stop the busy workers.
            error = BrokenBackend(f"the process pool's hub failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self.engine.fail_run(error)
            self._end()

    def _drain_wake(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _end(self) -> None:
        """Give back what no worker will report, kill the busy workers, let go of the pool.

        A worker still busy is cancelled (or the run ended with work left,
        which a graceful end never has): nobody will read what it runs. The
        others keep their state, a frame half written included, for the next run.
        """
        try:
            self._release_pending()
            for w in list(self.state.workers.values()):
                if w.sends and w.state == "live":
                    self._kill(w)
        finally:
            self.sel.close()
            self.wake_r.close()
            self.wake_w.close()

    def _release_pending(self) -> None:
        for task in reversed(self.pending):
            self.engine.release(task)
        self.pending.clear()

    # ------------------------------------------------------------ dispatch
    def _dispatch(self) -> float | None:
        """Hand tasks to free workers, start workers that work needs; the
        select timeout until the next try (None: until an event)."""
        engine = self.engine
        state = self.state
        timeout: float | None = None
        while True:
            limit = self.limit()
            idle: Worker | None = None
            room: Worker | None = None  # a busy worker with a free place in its queue
            busy = live = 0
            for w in state.workers.values():
                if w.state != "live" or not w.ready or w.sock is None:
                    continue
                live += 1
                if w.sends:
                    busy += 1
                if not self._usable(w):
                    continue
                if not w.sends:
                    idle = idle or w
                elif len(w.sends) < self.depth:
                    room = room or w
            if busy >= limit:
                idle = None
            if idle is not None:
                if self.pending:
                    self._send(idle, self.pending.popleft())
                    continue
                got = engine.acquire()
                if isinstance(got, Work):
                    self._send(idle, got.task)
                    continue
                if isinstance(got, Wait) and self._steal():
                    continue  # the stolen chunk is the engine's again: hand it out
                timeout = _seconds(got)
                break
            may_start = live + state.starting < limit and not state.closed
            if len(self.pending) > state.starting:  # a worker died before it was ready
                if may_start:
                    state.spawn()
                    continue
                if room is not None:
                    self._send(room, self.pending.popleft())
                    continue
                break
            if may_start:
                got = engine.acquire()
                if isinstance(got, Work):
                    self.pending.append(got.task)  # a task waits, and no worker is free
                    state.spawn()
                    continue
                timeout = _seconds(got)
                break
            if room is not None:
                got = engine.acquire()
                if isinstance(got, Work):
                    self._send(room, got.task)
                    continue
                timeout = _seconds(got)
            break
        if self.job.stream_all:
            self._release_pending()
        return timeout

    def _usable(self, w: Worker) -> bool:
        return self.job.max_items is None or w.served < self.job.max_items

    def _steal(self) -> bool:
        """Take back a chunk queued behind a busy worker's running one, if any
        has not started yet; True if one did: the engine has it again."""
        for w in self.state.workers.values():
            sent = self._take_back(w)
            if sent is not None:
                self.engine.release(sent.task)  # an isolated task stays isolated
                return True
        return False

    def _take_back(self, w: Worker) -> Sent | None:
        """The last chunk queued on ``w``, if the worker has not started it."""
        if (w.state != "live" or w.sock is None or len(w.sends) < 2
                or w.sends[-1].ticket <= w.claimed):
            return None
        ticket = take_ticket(w.claim_r)
        if ticket is None:  # the worker took every ticket: its chunks have started
            w.claimed = w.sends[-1].ticket
            return None
        sent = next((s for s in w.sends if s.ticket == ticket), None)
        if sent is None:
            return None
        w.sends.remove(sent)
        w.served -= sent.count
        return sent

    def _halt(self) -> None:
        """The engine stopped (all_or_nothing saw a failure, or the run is
        over early): no item that has not started should start."""
        self.halted = True
        self.state.flag.stop(self.job.id)  # workers stop their chunks between items
        self._release_pending()
        for w in self.state.workers.values():
            while (sent := self._take_back(w)) is not None:
                self.engine.release(sent.task)

    def _send(self, w: Worker, task: Task) -> None:
        """Send ``task``'s next items to ``w``: up to its quota, up to an unpicklable item."""
        engine = self.engine
        while not task.closed:
            start = task.done
            count = len(task.items) - start
            if self.job.max_items is not None:
                count = min(count, self.job.max_items - w.served)
            items = task.items
            if start or count < len(items):
                items = items[start : start + count]
            sendable, body, error = pickle_items(items, task.start + start, self.other_main)
            if sendable == 0:
                assert error is not None
                engine.complete(task, Outcome([None], {0: error}, 0.0, "driver"))
                continue  # the item fails alone; try the rest
            if w.job != self.job.id:  # its first chunk of this run: fn goes first
                w.out.put(JOB, self.job.frame)
                w.job = self.job.id
            stream = self.job.stream_all or task.isolated
            self.in_bytes = len(body) / sendable
            w.tickets += 1
            put_ticket(w.claim_w, w.tickets)  # before the chunk: the worker looks for it then
            w.sends.append(Sent(task, w.tickets, sendable, stream,
                                start + sendable < len(task.items)))
            w.served += sendable
            w.out.put(RUN_STREAM if stream else RUN_BATCH, body)
            self._flush(w)
            return

    def _flush(self, w: Worker) -> None:
        if w.sock is None:
            w.out.clear()
            return
        w.out.flush(w.sock)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if w.out else 0)
        if events != w.events:
            w.events = events
            self.sel.modify(w.sock, events, w)

    # --------------------------------------------------------- worker events
    def _on_worker(self, w: Worker, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(w)
        if mask & selectors.EVENT_READ and w.sock is not None:
            frames, closed = w.reader.read(w.sock)
            self._handle(w, frames)
            if closed:
                self._detach(w)  # how it ended comes from the fork server (EXITED)

    def _handle(self, w: Worker, frames: list[tuple[int, bytearray]]) -> None:
        # ITEM_DONE frames of one chunk that arrived together are reported at once.
        part = _Part()
        for kind, body in frames:
            if kind in (ITEM_DONE, ITEM_STOPPED):
                # The kind, not the body, says whether the worker stopped the
                # chunk: a body that does not unpickle must not hide it.
                stopped = kind == ITEM_STOPPED
                try:
                    v, e, s, c, _ = load_result(body)
                except Exception as exc:
                    # This item's value does not unpickle here: it fails alone,
                    # and the worker goes on with the chunk's next items.
                    v, e, s, c = [None], {0: _undecodable(exc)}, 0.0, None
                part.add(v, e, s, c)
                if stopped or len(part.values) == w.sends[0].count:
                    part = self._report(w, part, stopped)
                continue
            part = self._report(w, part)
            if kind == BATCH_DONE:
                count = w.sends[0].count
                self.out_bytes = len(body) / count
                try:
                    v, e, s, c, stopped = load_result(body)
                except Exception as exc:  # a value did not unpickle: find it item by item
                    self._lost(w, _undecodable(exc), exact=count == 1)
                    continue
                part.add(v, e, s, c)
                part = self._report(w, part, stopped)
            elif kind == READY:
                w.ready = True
                self.state.starting -= 1
                self.state.startup_deaths = 0
            elif kind == UNREADABLE:  # the chunk did not unpickle in the worker
                self._lost(w, load_error(body), exact=w.sends[0].count == 1)
            elif kind == JOB_FAILED:
                self._job_failed(w, load_error(body))
            elif kind == FATAL:
                w.state = "retiring"  # it exits now; every worker would fail the same way
                self.engine.fail_run(load_error(body))
            else:
                raise RuntimeError(f"unexpected frame kind {kind} from worker pid {w.pid}")
        self._report(w, part)

    def _report(self, w: Worker, part: _Part, stopped: bool = False) -> _Part:
        """Report the items of ``part`` (the next ones of ``w``'s running
        chunk); return an empty part to gather the next. ``stopped``: the
        worker ran no more of the chunk (all_or_nothing)."""
        if not part.values and not stopped:
            return part
        sent = w.sends[0]
        if part.values:
            self.engine.complete(sent.task, Outcome(
                part.values, part.errors or None, part.seconds, w.label, cpu=part.cpu,
                stopped=stopped, item_bytes=max(self.in_bytes, self.out_bytes)))
        else:  # stopped before its next item: the rest goes back, untouched
            self.engine.release(sent.task)
        sent.count -= len(part.values)
        if sent.count <= 0 or stopped:
            w.sends.popleft()
            w.served -= sent.count  # items it will not run count against no quota
            if sent.release_rest and not stopped:
                self.engine.release(sent.task)
            self._retire_if_spent(w)
        return _Part()

    def _lost(self, w: Worker, error: BaseException, exact: bool) -> None:
        """The report of ``w``'s running chunk cannot be read."""
        sent = w.sends.popleft()
        self._rerun(sent.task, error, exact)
        self._retire_if_spent(w)

    def _rerun(self, task: Task, error: BaseException, exact: bool) -> None:
        """A worker died with ``task``, or its report cannot be read: the
        engine's crash-isolation rule decides what runs again."""
        flag = self.state.flag
        if not exact and not self.engine.stopped and flag.stopped(self.job.id):
            # The worker may have announced a failure the driver will never
            # read (no retries: it sets the flag itself, then reports). The
            # items are re-run one by one to find it, and the flag would stop
            # them all: it waits until the failure is settled (``_halt``).
            flag.stop(0)
        self.engine.lost(task, error, exact=exact)

    def _job_failed(self, w: Worker, error: BaseException) -> None:
        """``fn`` does not unpickle in the worker: the run cannot go on. The
        worker skips the chunks it was sent and stays for other runs."""
        add_note(error, "shoal: raised in a worker process while unpickling fn")
        for sent in w.sends:
            w.served -= sent.count
            self.engine.release(sent.task)
        w.sends.clear()
        self.engine.fail_run(error)

    def _retire_if_spent(self, w: Worker) -> None:
        if self.job.max_items is not None and w.served >= self.job.max_items and not w.sends:
            w.state = "retiring"  # max_items_per_worker: closing its socket ends it
            self._detach(w)  # a replacement starts when work needs one

    def _detach(self, w: Worker) -> None:
        if w.sock is not None:
            self.sel.unregister(w.sock)
        w.detach()

    def _kill(self, w: Worker) -> None:
        """SIGKILL ``w`` and its group; what it was sent goes back to the engine."""
        self.state.kill(w)
        for sent in w.sends:
            self.engine.release(sent.task)  # a timed-out task is closed already: ignored
        w.sends.clear()
        self._detach(w)

    def _abandon(self, task: Task) -> None:
        if task in self.pending:
            self.pending.remove(task)
        for w in list(self.state.workers.values()):
            if w.state == "live" and any(s.task is task for s in w.sends):
                self._kill(w)  # a replacement starts when work needs one

    # -------------------------------------------------------- control events
    def _on_control(self) -> None:
        state = self.state
        server = state.server
        assert server is not None
        record = state.control.read(server.control)
        if record is None:
            self.sel.unregister(server.control)
            state.broken = (f"the process pool's fork server (pid {server.pid}) died; its "
                            "workers died with it: close the pool and start another")
            self.engine.fail_run(BrokenBackend(state.broken))
            return
        op, a, b, fds = record
        if op == OP_SPAWNED:
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            w = Worker(b, sock, (fds[1], fds[2]))
            state.workers[b] = w
            self.sel.register(sock, selectors.EVENT_READ, w)
        elif op == OP_SPAWN_FAILED:
            state.starting -= 1
            self.engine.fail_run(BrokenBackend(
                f"cannot start a worker process: {_strerror(b)}"))
        elif op == OP_EXITED:
            self._on_exit(a, b)

    def _on_exit(self, pid: int, code: int) -> None:
        w = self.state.workers.pop(pid, None)
        if w is None:
            return
        if w.sock is not None:
            # It has exited: whatever it wrote before is in the socket now.
            frames, _ = w.reader.read(w.sock, drain=True)
            self._handle(w, frames)
            self._detach(w)
        if not w.ready:
            self.state.starting -= 1
        if w.state == "live":
            self._crashed(w, code)

    def _crashed(self, w: Worker, code: int) -> None:
        engine = self.engine
        state = self.state
        how = describe_exit(code)
        sends = list(w.sends)
        w.sends.clear()
        if not w.ready:
            state.startup_deaths += 1
            if state.startup_deaths >= MAX_STARTUP_DEATHS:
                engine.fail_run(BrokenBackend(
                    f"worker processes die while starting (worker pid {w.pid} {how}); "
                    "check the initializer and what it imports"
                ))
                return
        if sends:
            running = sends[0]
            task = running.task
            index = task.start + task.done
            error = WorkerCrashed(f"worker pid {w.pid} {how} while running item {index}", code)
            self._rerun(task, error, exact=running.stream or running.count == 1)
            for sent in sends[1:]:
                engine.release(sent.task)
        # No replacement here: the dispatcher starts one when work needs it.


def _seconds(answer: Any) -> float | None:
    """The select timeout for a ``Wait`` (None: until woken, or ``DONE``)."""
    if isinstance(answer, Wait) and not math.isinf(answer.seconds):
        return answer.seconds
    return None


def _strerror(errno: int) -> str:
    import os

    return os.strerror(errno)


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
