"""The wire of ``backend="processes"``: framing and pickling of every message.

Two kinds of connection, both Unix stream sockets, a pipe and a shared word:

* control socket, driver <-> fork server: fixed-size ``RECORD`` s
  ``(op, a, b)``. A new worker's socket and claim pipe travel with its
  ``SPAWNED`` record as SCM_RIGHTS; reading one record at a time keeps the
  fds with their record.
* worker socket, driver <-> worker: frames ``HEADER (kind, length)`` + a
  pickle. The worker reads and writes them blocking (``send_frame``,
  ``recv_frame``); the driver's hub, on non-blocking sockets, splits what it
  reads with a ``FrameReader`` and queues what it writes in a ``FrameWriter``.
  A worker outlives a run (warm workers): each run is a *job*, its ``fn``
  pickled once and sent to a worker in a ``JOB`` frame before the worker's
  first chunk of that run; the worker keeps it until the next ``JOB``.
* claim pipe, one per worker, whose read end both the driver and the worker
  hold: for every chunk it sends, the driver first writes the chunk's
  *ticket* (its number on that worker) into the pipe. Before running a chunk
  the worker takes its ticket out; a ticket the driver took back first means
  the chunk was stolen for an idle worker, and the worker skips it without a
  word. A pipe read is atomic, so exactly one side gets each ticket: neither
  waits for the other, and a chunk never runs twice or not at all.
* stop flag, one word of shared memory per pool (``StopFlag``): the driver
  writes the run's job number there when the run stops (all_or_nothing saw a
  failure), and so does a worker whose item failed when no retry can follow;
  a worker whose job stops on error looks at it between items and stops its
  chunk there when it holds its job's number.

Serialization: protocol 5, the C pickler first and cloudpickle when it fails.
What cannot be pickled fails its own item with ``NotPicklable``: a chunk is
one pickle each way (items out, values back), and only when that pickle fails
are its items or values pickled one by one to find the culprit.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import cloudpickle

from shoal._core.errors import NotPicklable
from shoal._core.wire import (
    PICKLE_PROTOCOL,
    CarriedError,
    carried,
    describe_pickling_error,
    dumps,
    loads,
    unpicklable,
)

RECORD = struct.Struct("!iqq")
# driver -> fork server
OP_SPAWN = 1  # (token, 0): fork a worker
OP_KILL = 2  # (pid, 0): SIGKILL that worker, if it is still ours
OP_QUIT = 3  # (kill, 0): exit once every worker has ended; kill=1: SIGKILL them first
# fork server -> driver
OP_SPAWNED = 11  # (token, pid) + fds: the driver's end of the worker's socket, its claim pipe
OP_SPAWN_FAILED = 12  # (token, errno)
OP_EXITED = 13  # (pid, exitcode): negative for a signal, as in multiprocessing

HEADER = struct.Struct("!BQ")
# driver -> worker
RUN_BATCH = 1  # body: a pickled list of items; answer with one BATCH_DONE for the whole chunk
RUN_STREAM = 2  # as RUN_BATCH; answer with one ITEM_DONE per item, as each finishes
JOB = 3  # body: JOB_HEAD (job id, flags) + fn pickled with cloudpickle; no answer unless it fails
# worker -> driver
READY = 11  # initializer run; body empty
FATAL = 12  # the worker cannot start (the initializer raised); body: a CarriedError
BATCH_DONE = 13  # body: (values, {position: CarriedError} or None, seconds, cpu, stopped)
ITEM_DONE = 14  # body: as BATCH_DONE, for the next item of a RUN_STREAM chunk
UNREADABLE = 15  # the chunk did not unpickle; body: a CarriedError
JOB_FAILED = 16  # fn did not unpickle; body: a CarriedError; the worker skips the job's chunks
ITEM_STOPPED = 17  # as ITEM_DONE, and the worker ran no more of the chunk (all_or_nothing)

JOB_HEAD = struct.Struct("!QB")
JOB_STOP_ON_ERROR = 1  # all_or_nothing: stop a chunk at its first failure, or when stopped
JOB_SHARES_INIT_GLOBALS = 2  # fn and the initializer share their globals in the driver
JOB_FAILURE_ENDS_RUN = 4  # all_or_nothing without retries: set the stop flag at a failure

SMALL_FRAME = 1 << 16  # below this, header and body go out in one write
#: asked for each direction of a worker socket (the kernel caps it: net.core.wmem_max)
SOCKET_BUFFER = 1 << 20
_READ_SIZE = 1 << 18
_READS_PER_CALL = 32

TICKET = struct.Struct("=Q")  # 8 bytes: under PIPE_BUF, so written and read whole
STOP_WORD = 8  # bytes of the stop flag: one job number



# --------------------------------------------------------------- serialization
# Pickling, carried errors and the culprit search are the one wire format's
# (shoal._core.wire); what is here is only what this backend's frames hold.


def encode_batch(values: list[Any], errors: dict[int, BaseException] | None,
                 seconds: float, cpu: float | None, stopped: bool = False) -> bytes:
    """A BATCH_DONE / ITEM_DONE body (values, carried errors, wall and CPU
    seconds, whether the worker stopped early); a result that cannot be
    pickled fails its item alone."""
    errs = carried(errors)
    try:
        return dumps((values, errs, seconds, cpu, stopped))
    except Exception:
        pass
    errs = errs or {}
    for k, error in unpicklable(values, "the result").items():
        values[k] = None
        errs[k] = CarriedError(error)
    return dumps((values, errs, seconds, cpu, stopped))


def encode_error(exc: BaseException) -> bytes:
    """A FATAL / UNREADABLE body: the worker's exception, carried."""
    return dumps(CarriedError(exc))


def pickle_for_workers(what: str, obj: object) -> bytes:
    """``obj`` (fn, or the initializer and its arguments) pickled with cloudpickle.

    Raises:
        NotPicklable: it cannot be pickled, with the reason and how to fix it.
    """
    try:
        return cloudpickle.dumps(obj, PICKLE_PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        shown = obj[0] if isinstance(obj, tuple) else obj
        raise NotPicklable(
            f"{what} {shown!r} cannot be pickled to run in worker processes "
            f"({type(exc).__name__}: {exc}). Define it at module level or make what it "
            "captures picklable: a lock, an open file or a connection cannot cross to "
            "another process; open such resources once per worker with initializer="
        ) from exc


def initializer_payload(initializer: object, initargs: tuple[Any, ...]) -> bytes | None:
    """What every worker is started with: the initializer and its arguments, pickled once.

    Raises:
        NotPicklable: the initializer or its arguments cannot be pickled.
    """
    if initializer is None:
        return None
    return pickle_for_workers("initializer", (initializer, initargs))


def job_frame(job: int, fn_blob: bytes, flags: int) -> bytes:
    """A JOB body: the job's number, its flags and ``fn`` as pickled once for the run."""
    return JOB_HEAD.pack(job, flags) + fn_blob


def read_job(body: bytearray) -> tuple[int, int, Any]:
    """A JOB body: (job number, flags, fn).

    Raises:
        Exception: ``fn`` does not unpickle here (a module the worker cannot import).
    """
    job, flags = JOB_HEAD.unpack_from(body)
    return job, flags, pickle.loads(memoryview(body)[JOB_HEAD.size :])


def pickle_items(items: Sequence[Any], first_index: int,
                 other_main: bool) -> tuple[int, bytes, NotPicklable | None]:
    """Pickle the longest prefix of ``items`` that pickles.

    ``other_main``: the workers' ``__main__`` is not the driver's as it is
    now (an exec'd fork server, or one forked before this run), so whatever
    refers to ``__main__`` goes by value.

    Returns (how many items, their pickle, the error of the item after them or None).
    """
    try:
        return len(items), dumps(items, other_main=other_main), None
    except Exception:
        pass
    for k, item in enumerate(items):
        try:
            dumps(item, other_main=other_main)
        except Exception as exc:
            what = f"item {first_index + k}"
            error = NotPicklable(describe_pickling_error(what, item, exc))
            return k, dumps(items[:k], other_main=other_main) if k else b"", error
    return 1, dumps(items[:1], other_main=other_main), None  # each pickles alone: one by one


def load_result(
    body: bytearray,
) -> tuple[list[Any], dict[int, BaseException] | None, float, float | None, bool]:
    """A BATCH_DONE / ITEM_DONE body: values, failed positions' exceptions,
    wall and CPU seconds, whether the worker stopped early.

    Raises:
        Exception: the body does not unpickle here (a value's class the driver
            cannot import); the engine re-runs the items to find which.
    """
    values, errors, seconds, cpu, stopped = loads(body)
    return values, errors, seconds, cpu, stopped


def load_error(body: bytearray) -> BaseException:
    """A FATAL / UNREADABLE body: the worker's exception with its traceback as cause."""
    try:
        error: BaseException = loads(body)
    except Exception as exc:
        return NotPicklable(
            f"a worker failed, and its exception could not be unpickled in the driver: "
            f"{type(exc).__name__}: {exc}"
        )
    return error


# ------------------------------------------------------------------ stop flag
class StopFlag:
    """The number of the job (run) that stopped, in memory shared by the
    driver and every worker of a pool (0: none).

    The driver creates it (a memfd, else an unlinked temporary file) before
    the fork server starts; the fork server and the workers inherit the fd
    (an exec'd fork server gets it with ``pass_fds``) and map it. Runs use a
    pool one at a time, so one word serves them all. It holds a job's
    number, not a yes/no, because a worker may set it a moment after its
    run ended: the next run must not read that as its own stop. An aligned
    8-byte word is written and read whole: no lock is needed.
    """

    __slots__ = ("_map", "_word", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, STOP_WORD, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._word = memoryview(self._map).cast("Q")

    @classmethod
    def create(cls) -> StopFlag:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("shoal-stop-flag")
        else:  # pragma: no cover - not Linux
            import tempfile

            fd = os.dup(tempfile.TemporaryFile().fileno())
        os.ftruncate(fd, mmap.PAGESIZE)
        return cls(fd)

    def stop(self, job: int) -> None:
        self._word[0] = job

    def stopped(self, job: int) -> bool:
        return self._word[0] == job

    def close(self) -> None:
        self._word.release()
        self._map.close()
        os.close(self.fd)


# ---------------------------------------------------------------- claim pipe
def claim_pipe() -> tuple[int, int]:
    """A worker's claim pipe (read end, write end); reads never block."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # the flag is the pipe's: the worker's reads too
    return read_end, write_end


def put_ticket(write_end: int, ticket: int) -> None:
    """Issue ``ticket``; the driver does it before it sends the chunk."""
    os.write(write_end, TICKET.pack(ticket))  # at most a few unclaimed: never full


def take_ticket(read_end: int) -> int | None:
    """The oldest ticket nobody has taken yet, or None."""
    try:
        data = os.read(read_end, TICKET.size)
    except BlockingIOError:
        return None
    return TICKET.unpack(data)[0] if len(data) == TICKET.size else None


class Claims:
    """The worker's side of the claim pipe: may it run the chunk it just read?"""

    __slots__ = ("_held", "_read_end", "_received")

    def __init__(self, read_end: int) -> None:
        self._read_end = read_end
        self._received = 0  # chunks read from the socket; the last one's ticket is this
        self._held = 0  # the highest ticket taken out of the pipe

    def claim_next(self) -> bool:
        """True: run the chunk just received; False: the driver took it back."""
        self._received += 1
        while self._held < self._received:
            ticket = take_ticket(self._read_end)
            if ticket is None:
                break  # its ticket was issued before the chunk: the driver has it
            self._held = ticket
        # Tickets come out in order: one past ours (held for a later chunk) or
        # none left both mean the driver took ours.
        return self._held == self._received


# ----------------------------------------------------------------- frame I/O
def worker_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair for driver <-> worker, with buffers for whole frames.

    With room for a frame or two in the socket, a worker writes its results
    and starts its next chunk at once, and the driver hands a chunk over in
    one write, instead of each waiting for the other to get round to it.
    """
    pair = socket.socketpair()
    for sock in pair:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        except OSError:
            pass  # the default buffers work, with smaller frames
    return pair


def frame_budget(sock: socket.socket) -> int:
    """The largest frame ``sock`` takes in one write without blocking (about)."""
    try:
        # Linux reports twice what was set (the kernel's bookkeeping share);
        # half of that is what one write gets through.
        return max(1 << 16, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)
    except OSError:
        return 1 << 16


def send_frame(sock: socket.socket, kind: int, body: bytes) -> None:
    header = HEADER.pack(kind, len(body))
    if len(body) < SMALL_FRAME:
        sock.sendall(header + body)
    else:
        sock.sendall(header)
        sock.sendall(body)


def recv_exact(sock: socket.socket, size: int) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buf


def recv_frame(sock: socket.socket) -> tuple[int, bytearray] | None:
    """The next frame, or None once the driver has closed the socket."""
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    kind, size = HEADER.unpack(head)
    body = recv_exact(sock, size) if size else bytearray()
    if body is None:
        return None
    return kind, body


class FrameReader:
    """The driver's side: splits a non-blocking socket's bytes into frames."""

    __slots__ = ("_body", "_buf", "_got", "_kind", "_view")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._body: bytearray | None = None  # a large body being received in place
        self._view = memoryview(b"")
        self._got = 0
        self._kind = 0

    def read(self, sock: socket.socket,
             drain: bool = False) -> tuple[list[tuple[int, bytearray]], bool]:
        """Complete frames readable now, and whether the peer closed.

        Stops after ``_READS_PER_CALL`` reads so that one chatty worker cannot
        hold the hub (the selector reports the rest); ``drain``: read it all.
        """
        frames: list[tuple[int, bytearray]] = []
        for _ in itertools.count() if drain else range(_READS_PER_CALL):
            try:
                if self._body is not None:
                    n = sock.recv_into(self._view[self._got :])
                    data = b""
                else:
                    data = sock.recv(_READ_SIZE)
                    n = len(data)
            except (BlockingIOError, InterruptedError):
                return frames, False
            except OSError:
                return frames, True  # ECONNRESET and the like: the worker is gone
            if n == 0:
                return frames, True
            if self._body is not None:
                self._got += n
                if self._got == len(self._body):
                    frames.append((self._kind, self._body))
                    self._body = None
                    self._view = memoryview(b"")
                continue
            self._buf += data
            self._split(frames)
        return frames, False

    def _split(self, frames: list[tuple[int, bytearray]]) -> None:
        buf = self._buf
        pos = 0
        head = HEADER.size
        while len(buf) - pos >= head:
            kind, size = HEADER.unpack_from(buf, pos)
            end = pos + head + size
            if end <= len(buf):
                frames.append((kind, buf[pos + head : end]))
                pos = end
                continue
            if size > _READ_SIZE:  # receive the rest straight into the body's own buffer
                body = bytearray(size)
                have = len(buf) - pos - head
                body[:have] = buf[pos + head :]
                self._body, self._view, self._got, self._kind = body, memoryview(body), have, kind
                pos = len(buf)
            break
        del buf[:pos]



class FrameWriter:
    """The driver's side: frames queued for a non-blocking socket, in order."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out: deque[memoryview] = deque()

    def __bool__(self) -> bool:
        return bool(self._out)

    def put(self, kind: int, body: bytes) -> None:
        header = HEADER.pack(kind, len(body))
        if len(body) < SMALL_FRAME:
            self._out.append(memoryview(header + body))
        else:
            self._out.append(memoryview(header))
            self._out.append(memoryview(body))

    def flush(self, sock: socket.socket) -> None:
        """Write what the socket takes now; the rest waits for the next call.

        A socket that fails (the worker is gone) drops everything: how the
        worker ended comes from the fork server.
        """
        out = self._out
        while out:
            head = out[0]
            try:
                n = sock.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                out.clear()
                return
            if n < len(head):
                out[0] = head[n:]
                return
            out.popleft()

    def clear(self) -> None:
        self._out.clear()


class ControlReader:
    """The driver's side of the control socket: whole records, with their fds.

    Reads at most one record per call, so that a SPAWNED record's fds
    (SCM_RIGHTS) are never mixed up with the next record's.
    """

    __slots__ = ("_buf", "_fds")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []

    def read(self, sock: socket.socket) -> tuple[int, int, int, list[int]] | None:
        """``(op, a, b, fds)``, or ``(0, 0, 0, [])`` if the record is not whole yet.

        Returns None once the fork server has closed its end (any fd received
        with a partial record is closed).
        """
        try:
            data, fds, _, _ = socket.recv_fds(sock, RECORD.size - len(self._buf), 3)
        except OSError:
            data, fds = b"", []
        self._fds.extend(fds)
        if not data:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            return None
        self._buf += data
        if len(self._buf) < RECORD.size:
            return 0, 0, 0, []
        op, a, b = RECORD.unpack(self._buf)
        self._buf.clear()
        fds, self._fds = self._fds, []
        return op, a, b, fds

    def discard(self) -> None:
        """Close the fds of a record never completed (the pool is closing)."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._buf.clear()
