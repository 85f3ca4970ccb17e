"""The far side of ``backend="processes"``: the two kinds of child process.

``_processes.py`` (the driver's hub) explains the design, ``_wire.py`` the
messages. This module holds what runs in the children, and the driver's
handle on the fork server:

* the **fork server**, one per pool: single-threaded and running no user code
  (it holds ``fn`` only as bytes), it forks workers on request, reaps them and
  reports how each one ended. It exits when the driver says so or goes away.
  ``start_fork_server`` starts it (fork or exec) and ``ForkServerHandle``
  reaps it.
* a **worker**: it unpickles ``fn`` once, runs the initializer once, then runs
  the chunks it is sent until the driver closes its socket.

**Start method.** Every worker is forked from a per-pool *fork server* that
is single-threaded and runs no user code (it holds ``fn`` as bytes only), so
no lock can be held at fork time: forking from it is both fast (about a
millisecond) and safe. When the driver itself is single-threaded at
``start()`` (Linux, counted in ``/proc/self/task``, which also sees threads
that C libraries started) the fork server is forked from the driver: start-up
costs a few milliseconds and modules the driver imported are already loaded in
every worker. Otherwise (the driver has threads, macOS, other POSIX) the fork
server is started with exec (a fresh ``python -c``), like multiprocessing's
forkserver, only without re-running ``__main__``. Either way ``fn`` crosses as
cloudpickle bytes and is unpickled once per worker, so lambdas, closures and
functions of ``__main__`` or a notebook behave the same on both paths. The
exec path costs about 0.1 s more per pool (the fresh interpreter imports
shoal); note that importing numpy is enough to take it, since its BLAS starts
threads.

Forked from the driver, the fork server shares the driver's memory
(copy-on-write) for as long as the pool lives, and so do the workers: each
page the driver then writes to is copied once, which costs the driver about a
fifth of its time on tiny items (measured: 25 ms of 110 ms for a million).
``gc.freeze()`` in the fork server keeps collections in it and its workers
from writing to every inherited object. prctl is looked up before the fork,
not with ``ctypes.util.find_library`` (which runs ``ldconfig``).

**No orphans.** ``shutdown(cancel=True)`` has the fork server SIGKILL and reap
every worker, then reaps the fork server. If the driver dies, the fork server
sees its control socket close and kills its workers; on Linux the fork server
and the workers also ask for SIGKILL when their parent dies (``prctl``).
"""

from __future__ import annotations

import ctypes
import gc
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
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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
    UNREADABLE,
    Claims,
    claim_pipe,
    encode_batch,
    encode_error,
    recv_exact,
    recv_frame,
    send_frame,
    worker_socketpair,
)
from shoal._core.calling import run_chunk, sync_caller
from shoal._core.errors import BrokenBackend, NotPicklable
from shoal._core.wire import PICKLE_PROTOCOL

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: how long reaping may take once a pidfd has said the process exited
GRACE_AFTER_EXIT = 1.0
_EXEC_SCRIPT = "from shoal._backends._processes.child import serve_exec; serve_exec()"


# -------------------------------------------------------------------- worker
def _run_worker(sock: socket.socket, claim_fd: int, payload: bytes) -> None:
    try:
        fn_blob, init_blob = pickle.loads(payload)
        fn = pickle.loads(fn_blob)
        call = sync_caller(fn)
        if init_blob is not None:
            init, initargs = pickle.loads(init_blob)
            init(*initargs)
    except Exception as exc:
        send_frame(sock, FATAL, encode_error(exc))
        return
    send_frame(sock, READY, b"")
    claims = Claims(claim_fd)
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return  # the driver closed the socket: retire
        if not claims.claim_next():
            continue  # taken back for an idle worker: the driver expects no answer
        kind, body = frame
        try:
            items: Sequence[Any] = pickle.loads(body)
        except Exception as exc:
            _fail_unreadable(sock, exc)
            continue
        if kind == RUN_BATCH:
            out = run_chunk(call, items, "")
            send_frame(sock, BATCH_DONE, encode_batch(out.values, out.errors, out.duration,
                                                      out.cpu))
            continue
        for item in items:
            out = run_chunk(call, (item,), "")
            send_frame(sock, ITEM_DONE, encode_batch(out.values, out.errors, out.duration,
                                                     out.cpu))


def _fail_unreadable(sock: socket.socket, exc: Exception) -> None:
    # The chunk pickled in the driver but does not unpickle here (a class the
    # worker cannot import, say): the driver fails the chunk's items.
    error = NotPicklable(
        f"the items could not be unpickled in the worker: {type(exc).__name__}: {exc}"
    )
    send_frame(sock, UNREADABLE, encode_error(error))


def worker_main(sock: socket.socket, claim_fd: int, payload: bytes) -> NoReturn:
    """Run a worker until its socket closes; never returns.

    ``SystemExit`` raised by ``fn`` ends the worker with that exit code, like
    any other way of dying: the driver reports the item as ``WorkerCrashed``.
    """
    code = 0
    try:
        _run_worker(sock, claim_fd, payload)
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
_prctl: Any = None  # libc's prctl, once looked up (None: not looked up yet)


def _parent_death_signal() -> Callable[[], None] | None:
    """A function that makes this process get SIGKILL when its parent dies (Linux).

    prctl is looked up in the symbols the interpreter already has loaded
    (``CDLL(None)``), not with ``ctypes.util.find_library``, which runs
    ``ldconfig`` in a subprocess: that cost milliseconds on every pool start.
    The driver looks it up before it forks the fork server, which inherits it.
    """
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    if _prctl is False:
        return None
    prctl = _prctl

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
        # Collections in this process and its workers skip what was inherited:
        # scanning it would copy every page of it (copy-on-write) for nothing.
        gc.freeze()
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
        data = recv_exact(self.control, RECORD.size)
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
        ours, theirs = worker_socketpair()
        claim_r, claim_w = claim_pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            os.close(claim_r)
            os.close(claim_w)
            self.send(OP_SPAWN_FAILED, token, exc.errno or 0)
            return
        if pid == 0:  # the worker
            try:
                ours.close()
                os.close(claim_w)
                self.control.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.wake_r)
                os.close(self.wake_w)
                if self.arm_parent_death is not None:
                    self.arm_parent_death()
                if os.getppid() != self.pid:
                    os._exit(0)  # the server died before the signal was armed
                worker_main(theirs, claim_r, self.payload)
            finally:
                os._exit(70)
        theirs.close()
        self.children.add(pid)
        try:
            self.send(OP_SPAWNED, token, pid, [ours.fileno(), claim_r, claim_w])
        finally:
            ours.close()
            os.close(claim_r)
            os.close(claim_w)

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
        head = recv_exact(control, 8)
        if head is None:
            os._exit(0)
        (size,) = struct.unpack("!Q", head)
        blob = recv_exact(control, size)
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
        _parent_death_signal()  # look prctl up once, here: the fork server inherits it
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
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
        # A pidfd becomes readable the moment the process exits (Linux 5.3+):
        # shutdown then waits exactly as long as the fork server takes to end.
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError:
                pass

    @property
    def by_exec(self) -> bool:
        return self.popen is not None

    def wait(self, timeout: float) -> bool:
        """Reap the fork server; False if it is still running after ``timeout`` s."""
        if self.reaped:
            return True
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                return False
            os.close(self._pidfd)
            self._pidfd = None
            timeout = GRACE_AFTER_EXIT  # it has exited: reaping it is immediate
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
            time.sleep(pause)  # without a pidfd: a bounded poll for a child's exit
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
