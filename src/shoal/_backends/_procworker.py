"""The far side of ``backend="processes"``: child processes and the wire to them.

``_processes.py`` (the driver's hub) explains the design. This module holds
what runs in the two kinds of child process, the wire formats between them
and the driver, and the few driver-side pieces that belong to that wire:

* the **fork server**, one per pool: single-threaded and running no user code
  (it holds ``fn`` only as bytes), it forks workers on request, reaps them and
  reports how each one ended. It exits when the driver says so or goes away.
  ``start_fork_server`` starts it (fork or exec) and ``ForkServerHandle``
  reaps it.
* a **worker**: it unpickles ``fn`` once, runs the initializer once, then runs
  the chunks it is sent until the driver closes its socket.
* serialization: protocol 5, the C pickler first and cloudpickle when it fails;
  what cannot be pickled fails its own item with ``NotPicklable``.

Wire formats:

* control socket, driver <-> fork server: fixed-size ``RECORD`` s
  ``(op, a, b)``. A new worker's socket travels with its ``SPAWNED`` record as
  SCM_RIGHTS; reading one record at a time keeps the fd with its record.
* worker socket, driver <-> worker: frames ``HEADER (kind, length)`` + a
  pickle. ``FrameReader`` splits them on the driver's non-blocking side.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import cloudpickle

from shoal._calling import run_chunk, sync_caller
from shoal._errors import BrokenBackend, NotPicklable, RemoteTraceback

PICKLE_PROTOCOL = 5

RECORD = struct.Struct("!iqq")
# driver -> fork server
OP_SPAWN = 1  # (token, 0): fork a worker
OP_KILL = 2  # (pid, 0): SIGKILL that worker, if it is still ours
OP_QUIT = 3  # (kill, 0): exit once every worker has ended; kill=1: SIGKILL them first
# fork server -> driver
OP_SPAWNED = 11  # (token, pid) + the driver's end of the worker's socket
OP_SPAWN_FAILED = 12  # (token, errno)
OP_EXITED = 13  # (pid, exitcode): negative for a signal, as in multiprocessing

HEADER = struct.Struct("!BQ")
# driver -> worker; body: a pickled list of items
RUN_BATCH = 1  # answer with one BATCH_DONE for the whole chunk
RUN_STREAM = 2  # answer with one ITEM_DONE per item, as each finishes
# worker -> driver
READY = 11  # fn unpickled and initializer run; body empty
FATAL = 12  # the worker cannot start; body: (exception, traceback text)
BATCH_DONE = 13  # body: (values, {position: (exception, traceback text)} or None, seconds)
ITEM_DONE = 14  # body: as BATCH_DONE, for the next single item of a RUN_STREAM chunk
UNREADABLE = 15  # the chunk did not unpickle; body: (exception, traceback text)

SMALL_FRAME = 1 << 16  # below this, header and body go out in one write
_READ_SIZE = 1 << 18
_READS_PER_CALL = 32
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_EXEC_SCRIPT = "from shoal._backends._procworker import serve_exec; serve_exec()"

RemoteError = tuple[BaseException, str]


# --------------------------------------------------------------- serialization
def dumps(obj: Any, by_value: bool = False) -> bytes:
    """Pickle ``obj`` with protocol 5.

    The C pickler first (fastest), cloudpickle when that fails: lambdas,
    closures and classes defined in ``__main__`` are pickled by value.
    ``by_value``: use cloudpickle at once (the other side has another ``__main__``).

    Raises:
        Exception: whatever cloudpickle raised for an object it cannot pickle.
    """
    if not by_value:
        try:
            return pickle.dumps(obj, PICKLE_PROTOCOL)
        except Exception:
            pass
    return cloudpickle.dumps(obj, PICKLE_PROTOCOL)  # type: ignore[no-any-return]


def describe_pickling_error(what: str, obj: Any, exc: BaseException) -> str:
    kind = type(obj).__qualname__
    return f"{what} (a {kind}) cannot be pickled: {type(exc).__name__}: {exc}"


def portable_error(exc: BaseException) -> RemoteError:
    """The exception and its formatted traceback, made safe to pickle.

    An exception that does not survive a pickle round trip is replaced by a
    ``RuntimeError`` carrying its repr, so that the item still fails with a
    readable message and the batch goes on.
    """
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(dumps(exc))
    except Exception as why:
        exc = RuntimeError(
            f"{type(exc).__qualname__}: {exc!r} (the exception could not be pickled to "
            f"cross to the driver: {type(why).__name__}: {why})"
        )
    return exc, text


def encode_batch(values: list[Any], errors: dict[int, BaseException] | None,
                 seconds: float) -> bytes:
    """The BATCH_DONE body; a result that cannot be pickled fails its item alone."""
    remote = None if errors is None else {k: portable_error(e) for k, e in errors.items()}
    try:
        return dumps((values, remote, seconds))
    except Exception:
        pass
    remote = remote or {}
    for k, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            values[k] = None
            remote[k] = portable_error(
                NotPicklable(describe_pickling_error("the result", value, exc))
            )
    return dumps((values, remote, seconds))


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


def pickle_items(items: list[Any], first_index: int,
                  by_value: bool) -> tuple[int, bytes, NotPicklable | None]:
    """Pickle the longest prefix of ``items`` that pickles.

    Returns (how many items, their pickle, the error of the item after them or None).
    """
    try:
        return len(items), dumps(items, by_value), None
    except Exception:
        pass
    for k, item in enumerate(items):
        try:
            dumps(item, by_value)
        except Exception as exc:
            what = f"item {first_index + k}"
            error = NotPicklable(describe_pickling_error(what, item, exc))
            return k, dumps(items[:k], by_value) if k else b"", error
    return 1, dumps(items[:1], by_value), None  # each pickles alone: send them one by one


def load_result(body: bytearray, count: int) -> tuple[list[Any], dict[int, RemoteError] | None,
                                                      float]:
    """A BATCH_DONE / ITEM_DONE body; one that will not unpickle fails its ``count`` items."""
    try:
        values, remote, seconds = pickle.loads(body)
        return values, remote, seconds
    except Exception as exc:
        error = NotPicklable(
            f"a result could not be unpickled in the driver: {type(exc).__name__}: {exc}"
        )
        return [None] * count, dict.fromkeys(range(count), (error, "")), 0.0


def with_remote_traceback(error: RemoteError) -> BaseException:
    """The exception, with the worker-side traceback as its ``__cause__``."""
    exc, text = error
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def load_error(body: bytearray) -> BaseException:
    """A FATAL / UNREADABLE body: the worker's exception with its traceback."""
    try:
        error: RemoteError = pickle.loads(body)
    except Exception as exc:
        return RuntimeError(
            f"a worker failed, and its exception could not be unpickled in the driver: "
            f"{type(exc).__name__}: {exc}"
        )
    return with_remote_traceback(error)


# ----------------------------------------------------------------- frame I/O
def send_frame(sock: socket.socket, kind: int, body: bytes) -> None:
    header = HEADER.pack(kind, len(body))
    if len(body) < SMALL_FRAME:
        sock.sendall(header + body)
    else:
        sock.sendall(header)
        sock.sendall(body)


def _recv_exact(sock: socket.socket, size: int) -> bytearray | None:
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
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    kind, size = HEADER.unpack(head)
    body = _recv_exact(sock, size) if size else bytearray()
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


# -------------------------------------------------------------------- worker
def _run_worker(sock: socket.socket, payload: bytes) -> None:
    try:
        fn_blob, init_blob = pickle.loads(payload)
        fn = pickle.loads(fn_blob)
        call = sync_caller(fn)
        if init_blob is not None:
            init, initargs = pickle.loads(init_blob)
            init(*initargs)
    except Exception as exc:
        send_frame(sock, FATAL, dumps(portable_error(exc)))
        return
    send_frame(sock, READY, b"")
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return  # the driver closed the socket: retire
        kind, body = frame
        try:
            items: list[Any] = pickle.loads(body)
        except Exception as exc:
            _fail_unreadable(sock, exc)
            continue
        if kind == RUN_BATCH:
            out = run_chunk(call, items, "")
            send_frame(sock, BATCH_DONE, encode_batch(out.values, out.errors, out.duration))
            continue
        for item in items:
            out = run_chunk(call, (item,), "")
            send_frame(sock, ITEM_DONE, encode_batch(out.values, out.errors, out.duration))


def _fail_unreadable(sock: socket.socket, exc: Exception) -> None:
    # The chunk pickled in the driver but does not unpickle here (a class the
    # worker cannot import, say): the driver fails the chunk's items.
    error = NotPicklable(
        f"the items could not be unpickled in the worker: {type(exc).__name__}: {exc}"
    )
    send_frame(sock, UNREADABLE, dumps(portable_error(error)))


def worker_main(sock: socket.socket, payload: bytes) -> NoReturn:
    """Run a worker until its socket closes; never returns.

    ``SystemExit`` raised by ``fn`` ends the worker with that exit code, like
    any other way of dying: the driver reports the item as ``WorkerCrashed``.
    """
    code = 0
    try:
        _run_worker(sock, payload)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except ConnectionError:  # the driver closed our socket (EPIPE, ECONNRESET)
        code = 0  # retired: the driver is done with us
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


# --------------------------------------------------------------- fork server
def _parent_death_signal() -> Callable[[], None] | None:
    """A function that makes this process get SIGKILL when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return arm


class _ForkServer:
    """The fork server's state. Single-threaded: no lock anywhere."""

    def __init__(self, control: socket.socket, payload: bytes) -> None:
        self.control = control
        self.payload = payload
        self.children: set[int] = set()
        self.pid = os.getpid()
        self.arm_parent_death = _parent_death_signal()
        # SIGCHLD wakes select() through the wake-up fd; the handler itself does nothing.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def run(self) -> None:
        while True:
            control = self.control.fileno()
            ready, _, _ = select.select([control, self.wake_r], [], [])
            if self.wake_r in ready:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                self.reap()
            if control in ready:
                record = self.recv_record()
                if record is None:
                    self.end(kill=True)  # the driver is gone: leave nothing behind
                    return
                op, a, _ = record
                if op == OP_SPAWN:
                    self.spawn(a)
                elif op == OP_KILL and a in self.children:
                    os.kill(a, signal.SIGKILL)
                elif op == OP_QUIT:
                    self.end(kill=bool(a))
                    return

    def recv_record(self) -> tuple[int, int, int] | None:
        data = _recv_exact(self.control, RECORD.size)
        if data is None:
            return None
        op, a, b = RECORD.unpack(data)
        return op, a, b

    def send(self, op: int, a: int, b: int, fds: list[int] | None = None) -> None:
        record = RECORD.pack(op, a, b)
        if fds:
            socket.send_fds(self.control, [record], fds)
        else:
            self.control.sendall(record)

    def spawn(self, token: int) -> None:
        ours, theirs = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            self.send(OP_SPAWN_FAILED, token, exc.errno or 0)
            return
        if pid == 0:  # the worker
            try:
                ours.close()
                self.control.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.wake_r)
                os.close(self.wake_w)
                if self.arm_parent_death is not None:
                    self.arm_parent_death()
                if os.getppid() != self.pid:
                    os._exit(0)  # the server died before the signal was armed
                worker_main(theirs, self.payload)
            finally:
                os._exit(70)
        theirs.close()
        self.children.add(pid)
        try:
            self.send(OP_SPAWNED, token, pid, [ours.fileno()])
        finally:
            ours.close()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send(OP_EXITED, pid, os.waitstatus_to_exitcode(status))

    def end(self, kill: bool) -> None:
        """Reap every worker (SIGKILL them first if ``kill``)."""
        if kill:
            for pid in self.children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while self.children:
            try:
                os.waitpid(self.children.pop(), 0)
            except ChildProcessError:
                pass


def _ignore_signal(signum: int, frame: object) -> None:
    return None


def serve(control: socket.socket, payload: bytes, arm_parent_death: bool) -> NoReturn:
    """Run the fork server; never returns (``os._exit``).

    ``arm_parent_death``: ask for SIGKILL when the driver's thread that forked
    us ends (only safe when that thread is the main thread).
    """
    code = 0
    server: _ForkServer | None = None
    try:
        server = _ForkServer(control, payload)
        if arm_parent_death and server.arm_parent_death is not None:
            server.arm_parent_death()
        server.run()
    except ConnectionError:
        code = 0  # the driver went away while we were reporting
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        try:
            if server is not None:
                server.end(kill=True)  # no-op after a normal QUIT: never leave a worker
        finally:
            os._exit(code)


def serve_exec() -> NoReturn:
    """Entry point of a fork server started with exec (``python -c``).

    Reads ``(sys.path, payload)`` from the control socket passed as argv[1].
    """
    try:
        control = socket.socket(fileno=int(sys.argv[1]))
        head = _recv_exact(control, 8)
        if head is None:
            os._exit(0)
        (size,) = struct.unpack("!Q", head)
        blob = _recv_exact(control, size)
        if blob is None:
            os._exit(0)
        path, payload = pickle.loads(blob)
        sys.path[:] = path
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    serve(control, payload, arm_parent_death=False)


# ------------------------------------------------------ the driver's handle
def fork_is_safe() -> bool:
    """True when this process has exactly one thread (Linux only: else False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def start_fork_server(payload: bytes) -> ForkServerHandle:
    """Fork the fork server if this process is single-threaded, else exec it.

    Raises:
        BrokenBackend: the interpreter could not be started.
    """
    ours, theirs = socket.socketpair()
    if fork_is_safe():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # or the children would print the driver's buffer again
            except Exception:
                pass
        pid = os.fork()
        if pid == 0:  # the fork server; never returns into the driver's code
            try:
                ours.close()
                serve(theirs, payload, arm_parent_death=True)
            finally:
                os._exit(70)
        theirs.close()
        return ForkServerHandle(pid, ours, None)
    # The directory holding the shoal package, for the fresh interpreter's imports.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", _EXEC_SCRIPT, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        ours.close()
        theirs.close()
        raise BrokenBackend(f"cannot start the process pool's fork server: {exc}") from exc
    theirs.close()
    blob = pickle.dumps((sys.path, payload), PICKLE_PROTOCOL)
    ours.sendall(len(blob).to_bytes(8, "big") + blob)
    return ForkServerHandle(popen.pid, ours, popen)


class ForkServerHandle:
    """The driver's handle on a fork server: its control socket and how to reap it."""

    def __init__(self, pid: int, control: socket.socket, popen: subprocess.Popen[bytes] | None):
        self.pid = pid
        self.control = control
        self.popen = popen  # set when started with exec
        self.reaped = False

    @property
    def by_exec(self) -> bool:
        return self.popen is not None

    def wait(self, timeout: float) -> bool:
        """Reap the fork server; False if it is still running after ``timeout`` s."""
        if self.reaped:
            return True
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            self.reaped = True
            return True
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid
            if pid:
                self.reaped = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)  # shutdown only: a bounded poll for a child's exit
            pause = min(pause * 2, 0.02)

    def kill(self) -> None:
        if not self.reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def describe_exit(code: int) -> str:
    """'exited with code 3' or 'died with signal SIGKILL (-9)'."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"died with signal {name} ({code})"
