"""The fork server of ``backend="processes"``, and the driver's handle on it.

``pool.py`` explains the design, ``protocol.py`` the messages, ``worker.py``
what a worker runs. The **fork server**, one per pool, is single-threaded and
runs no user code (it holds the initializer only as bytes): it forks workers
on request, reaps them and reports how each one ended. It exits when the
driver says so or goes away. ``start_fork_server`` starts it (fork or exec)
and ``ForkServerHandle`` reaps it.

**Start method.** Every worker is forked from the fork server, so no lock
can be held at fork time: forking from it is both fast (about a millisecond)
and safe. When the driver itself is single-threaded when the pool starts
(Linux, counted in ``/proc/self/task``, which also sees threads that C
libraries started) the fork server is forked from the driver: start-up costs
a few milliseconds and modules the driver imported are already loaded in
every worker. Otherwise (the driver has threads, macOS, other POSIX) the fork
server is started with exec (a fresh ``python -c``), like multiprocessing's
forkserver, only without re-running ``__main__``. Either way ``fn`` and the
initializer cross as cloudpickle bytes, so lambdas, closures and functions of
``__main__`` or a notebook behave the same on both paths. The exec path costs
about 0.1 s more per pool (the fresh interpreter imports shoal); note that
importing numpy is enough to take it, since its BLAS starts threads.

**Process groups.** Each worker starts a process group of its own
(``setpgid``), so a worker and every process an item started (a
``subprocess.run`` it waits on, a child it left behind) are killed together:
a timed-out or cancelled worker is killed with ``killpg``, and when any
worker ends, however it ends, what is left of its group is killed before the
worker is reaped (its pid, the group's id, cannot be reused until then). A
process an item moves to a group or session of its own
(``start_new_session=True``) is not followed. A group, not a session
(``setsid``): on Linux a session is a scheduling group of its own
(autogroup), which gave each worker as much CPU as the driver's two threads
together and made tiny items ~7% slower. In a group that is not the
terminal's foreground group, reading the terminal would stop a worker
(SIGTTIN), so a worker's stdin is ``/dev/null``, as multiprocessing does.

Forked from the driver, the fork server shares the driver's memory
(copy-on-write) for as long as the pool lives, and so do the workers: each
page the driver then writes to is copied once, which costs the driver about a
fifth of its time on tiny items (measured: 25 ms of 110 ms for a million).
``gc.freeze()`` in the fork server keeps collections in it and its workers
from writing to every inherited object. prctl is looked up before the fork,
not with ``ctypes.util.find_library`` (which runs ``ldconfig``).

**No orphans.** Closing the pool with ``cancel`` has the fork server SIGKILL
and reap every worker's group, then reaps the fork server. If the driver
dies, the fork server sees its control socket close and kills its workers'
groups; on Linux the fork server and the workers also ask for SIGKILL when
their parent dies (``prctl``).
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
from collections.abc import Callable
from typing import Any, NoReturn

from shoal._backends._processes.protocol import (
    OP_EXITED,
    OP_KILL,
    OP_QUIT,
    OP_SPAWN,
    OP_SPAWN_FAILED,
    OP_SPAWNED,
    RECORD,
    claim_pipe,
    recv_exact,
    worker_socketpair,
)
from shoal._backends._processes.worker import worker_main
from shoal._core.errors import BrokenBackend
from shoal._core.wire import PICKLE_PROTOCOL

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: how long reaping may take once a pidfd has said the process exited
GRACE_AFTER_EXIT = 1.0
_EXEC_SCRIPT = "from shoal._backends._processes.forkserver import serve_exec; serve_exec()"


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

    def __init__(self, control: socket.socket, init_blob: bytes | None, stop_fd: int) -> None:
        self.control = control
        self.init_blob = init_blob  # the initializer, as bytes: unpickled only in the workers
        self.stop_fd = stop_fd
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
                    kill_group(a)  # not reaped yet: the group's id is still its own
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
                os.setpgid(0, 0)  # its own group: killed with whatever its items start
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)  # never the terminal (see "Process groups")
                os.close(devnull)
                if self.arm_parent_death is not None:
                    self.arm_parent_death()
                if os.getppid() != self.pid:
                    os._exit(0)  # the server died before the signal was armed
                worker_main(theirs, claim_r, self.stop_fd, self.init_blob)
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
            reaped = reap_child(-1, block=False)
            if reaped is None:
                return
            self.children.discard(reaped[0])
            self.send(OP_EXITED, *reaped)

    def end(self, kill: bool) -> None:
        """Reap every worker and its group (SIGKILL them first if ``kill``)."""
        if kill:
            for pid in self.children:
                kill_group(pid)
        for pid in list(self.children):
            reap_child(pid, block=True)
            self.children.discard(pid)


def reap_child(pid: int, block: bool) -> tuple[int, int] | None:
    """Reap a child that has exited (``pid``, or any: -1): (its pid, its exit
    code), or None. What is left of its process group is killed first, while
    the child is a zombie: until it is reaped, its pid (the group's id)
    cannot be given to another process.
    """
    if hasattr(os, "waitid"):
        options = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            info = os.waitid(os.P_ALL if pid == -1 else os.P_PID, max(pid, 0), options)
        except ChildProcessError:
            return None
        if info is None:
            return None
        kill_group(info.si_pid)
        pid, status = os.waitpid(info.si_pid, 0)
    else:  # pragma: no cover - macOS has no waitid: reap, then kill what is left at once
        try:
            pid, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        kill_group(pid)  # POSIX keeps the id from reuse while the group has members
    return pid, os.waitstatus_to_exitcode(status)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left of it (or only what changed its user id: not ours to kill)


def _ignore_signal(signum: int, frame: object) -> None:
    return None


def serve(control: socket.socket, init_blob: bytes | None, stop_fd: int,
          arm_parent_death: bool) -> NoReturn:
    """Run the fork server; never returns (``os._exit``).

    ``arm_parent_death``: ask for SIGKILL when the driver's thread that forked
    us ends (only safe when that thread is the main thread).
    """
    code = 0
    server: _ForkServer | None = None
    try:
        server = _ForkServer(control, init_blob, stop_fd)
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

    Reads ``(sys.path, initializer blob)`` from the control socket passed as
    argv[1]; argv[2] is the stop flag's fd.
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
        path, init_blob = pickle.loads(blob)
        sys.path[:] = path
        stop_fd = int(sys.argv[2])
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    serve(control, init_blob, stop_fd, arm_parent_death=False)


# ------------------------------------------------------ the driver's handle
def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def fork_is_safe() -> bool:
    """True when this process has exactly one thread (Linux only: else False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def start_fork_server(init_blob: bytes | None, stop_fd: int,
                      others: Callable[[], list[int]]) -> ForkServerHandle:
    """Fork the fork server if this process is single-threaded, else exec it.

    ``others``: the fds of the driver's other pools, which a forked fork
    server closes at once: held open in it (and in its workers), the driver's
    end of another pool's worker socket would never tell that worker its
    socket closed. An exec'd one inherits only what it is passed.

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
        close = others()
        pid = os.fork()
        if pid == 0:  # the fork server; never returns into the driver's code
            try:
                # First: no collection may now free (and finalize) an object of
                # the driver's, such as a socket whose fd is about to be closed.
                gc.freeze()
                ours.close()
                for fd in close:
                    _close_quietly(fd)
                serve(theirs, init_blob, stop_fd, arm_parent_death=True)
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
            [sys.executable, "-c", _EXEC_SCRIPT, str(theirs.fileno()), str(stop_fd)],
            pass_fds=(theirs.fileno(), stop_fd), env=env, stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        ours.close()
        theirs.close()
        raise BrokenBackend(f"cannot start the process pool's fork server: {exc}") from exc
    theirs.close()
    blob = pickle.dumps((sys.path, init_blob), PICKLE_PROTOCOL)
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


