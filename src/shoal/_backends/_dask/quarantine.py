"""Isolated items on a Dask worker: each batch runs in a child process of its own.

When a Dask worker dies with a chunk, nobody knows which item killed it: the
engine hands the chunk's items back one by one as *isolated* tasks
(``Engine.lost``). The driver sends a batch of them as one Dask task,
``run_isolated``, which runs them one after the other in a fresh child process
of the worker and reads each item's outcome as the child reports it. If the
child dies, the item it was running is known exactly, and so is how it died
(exit code or signal); the Dask worker itself lives on, so no other task on it
is lost, and the items after the guilty one are given back untouched.

Why a fresh interpreter (``subprocess``) and not ``fork``: a Dask worker is
multi-threaded (its event loop, comms, the task threads), and a forked child
inherits whatever locks those threads held at that instant (logging's, a
BLAS pool's, the worker's own) and can hang in them; ``multiprocessing`` is
refused in a daemonic process (a worker under a nanny). A fresh interpreter
costs a few tenths of a second per batch, paid only after a crash; it runs
the initializer itself, so fn sees what the initializer set up.

The child's protocol: the parent writes one pickle to its stdin (the worker's
``sys.path``, the job blob: fn, initializer and initargs, and the items, each
pickled on its own by the driver so that one that does not unpickle fails
alone) and closes it. The child answers on a pipe of its own (its stdout and
stderr stay the worker's, for fn's prints and a crash's last words), in
frames: ``READY`` once fn is loaded and initialized, then one ``OUTCOME`` per
item (a pickle of value, ``CarriedError`` or None, and seconds), or one
``INIT_ERROR``. The child is its own process group, killed whole on timeout
or cancellation, and asks the kernel to kill it if the worker dies.

This module is imported by name on the workers, the scheduler (which
unpickles task specs) and in the child: keep it free of driver-only imports.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from shoal._core import wire
from shoal._core.errors import NotPicklable
from shoal._core.wire import CarriedError

READY, OUTCOME, INIT_ERROR = b"R", b"O", b"I"
_HEADER = struct.Struct("!cI")  # kind, body length
#: how often a worker waiting on its child checks whether its task was cancelled
POLL_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(slots=True)
class IsolatedReply:
    """What ``run_isolated`` sends back.

    ``outcomes``: one pickled (value, error, seconds) per item that ran to
    its end, in order, each decoded on its own by the driver. ``started``:
    the child loaded fn and began the items; ``exitcode``: how the child
    ended (negative: a signal), None if it was killed on purpose
    (``timed_out``, or the task was cancelled).
    """

    outcomes: list[bytes]
    started: bool
    exitcode: int | None
    worker: str
    init_error: Any = None  # CarriedError: the initializer (or loading fn) failed
    timed_out: bool = False




# ------------------------------------------------------------ the worker's side
def run_isolated(job: Any, items: Any, timeout: float | None = None) -> Any:
    """Runs on a Dask worker: the items, in order, in a fresh child process.

    ``job`` and ``items`` are ``worker.Pickled``: the run's job blob, and a
    pickled list of per-item blobs. ``timeout``: seconds for the whole batch
    (the run's per-item timeout; a batch under a timeout holds one item),
    after which the child is killed.

    Returns a ``worker.Pickled`` ``IsolatedReply``.
    """
    from dask.context import thread_state
    from distributed import get_worker

    from shoal._backends._dask.worker import Pickled

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    blobs: list[bytes] = pickle.loads(items.blob)
    if os.name != "posix":  # no process groups, no select on pipes: run them here
        return Pickled(wire.dumps(run_here(job, blobs, worker.address)))
    reply = IsolatedReply([], False, None, worker.address)
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(write_end), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(write_end,), start_new_session=True)
    finally:
        os.close(write_end)
    try:
        assert child.stdin is not None
        try:
            child.stdin.write(pickle.dumps((sys.path, bytes(job.blob), blobs), 5))
            child.stdin.close()
        except BrokenPipeError:
            pass  # it died already: its exit code says how
        deadline = None if timeout is None else time.monotonic() + timeout
        for kind, body in _frames(read_end, deadline, lambda: _cancelled(worker, key)):
            if kind == READY:
                reply.started = True
            elif kind == OUTCOME:
                reply.outcomes.append(body)
            elif kind == INIT_ERROR:
                reply.init_error = pickle.loads(body)
        if child.poll() is None:  # the deadline passed, or the task was cancelled
            reply.timed_out = deadline is not None and time.monotonic() >= deadline
            _kill(child)
        else:
            reply.exitcode = child.returncode
    finally:
        if child.poll() is None:
            _kill(child)
        os.close(read_end)
    return Pickled(wire.dumps(reply))


def run_here(job: Any, blobs: list[bytes], worker: str) -> IsolatedReply:
    """The items run by this worker itself, in turn (where no child can be
    watched): a death then loses the worker, and the engine fails the item."""
    from shoal._backends._dask.worker import load_job
    from shoal._core.calling import sync_caller

    reply = IsolatedReply([], True, None, worker)
    try:
        call = sync_caller(load_job(job)[0])
    except BaseException as exc:  # the initializer failed: the run must stop
        reply.init_error = CarriedError(exc)
        return reply
    for blob in blobs:
        reply.outcomes.append(_run_one(call, blob, worker))
    return reply


def _run_one(call: Callable[[Any], Any], blob: bytes, worker: str) -> bytes:
    """One item, unpickled and run on its own; its outcome, pickled."""
    from shoal._core.calling import run_chunk

    began = time.perf_counter()
    try:
        item = pickle.loads(blob)
    except Exception as exc:
        error: BaseException | None = NotPicklable(
            f"the item cannot be unpickled on the Dask worker: {type(exc).__name__}: {exc}")
        value = None
    else:
        outcome = run_chunk(call, [item], worker)
        value = outcome.values[0]
        error = outcome.errors[0] if outcome.errors else None
    return _outcome(value, error, time.perf_counter() - began)


def _frames(fd: int, deadline: float | None,
            cancelled: Callable[[], bool]) -> Iterator[tuple[bytes, bytes]]:
    """Frames read from ``fd`` until EOF, the deadline, or ``cancelled()``."""
    buffer = bytearray()
    while True:
        wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        if wait <= 0:
            return
        if not select.select([fd], [], [], wait)[0]:
            if cancelled():
                return
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            return  # EOF: the child ended (a frame cut short is dropped)
        buffer += data
        while len(buffer) >= _HEADER.size:
            kind, size = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            yield kind, bytes(buffer[_HEADER.size:end])
            del buffer[:end]


def _cancelled(worker: Any, key: Any) -> bool:
    """Has the scheduler released this task (the run ended, or gave up on it)?"""
    if key is None:
        return False  # not run by a Dask worker's task thread: nobody cancels it
    task = worker.state.tasks.get(key)
    return task is None or task.state == "cancelled"


def _kill(child: subprocess.Popen[bytes]) -> None:
    """Kill the child and whatever it started (its process group), then reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


# -------------------------------------------------------------- the child's side
def _send(out: int, kind: bytes, body: bytes) -> None:
    data = memoryview(_HEADER.pack(kind, len(body)) + body)
    while data:
        data = data[os.write(out, data):]


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the worker dies; exit if it has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (AttributeError, OSError):
            pass  # no prctl: the worker's kill of the process group still applies
    if os.getppid() != parent:
        os._exit(1)


def _outcome(value: Any, error: BaseException | None, seconds: float) -> bytes:
    """One item's outcome, pickled; a value that cannot be pickled fails its item."""
    try:
        return wire.dumps((value, None if error is None else CarriedError(error), seconds),
                          other_main=True)
    except Exception:
        bad = wire.unpicklable([value], "the value returned for this item", by_value=True)
        why = bad.get(0) or NotPicklable("the item's outcome cannot be pickled")
        return wire.dumps((None, CarriedError(why), seconds), other_main=True)


def _child(out: int, parent: int) -> None:
    from shoal._core.calling import sync_caller

    _die_with_parent(parent)
    path, job, items = pickle.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # fn gets no stdin (as on a worker), and never our pickles
    os.close(devnull)
    sys.path[:] = path
    try:
        fn, initializer, initargs, _ = pickle.loads(job)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        _send(out, INIT_ERROR, wire.dumps(CarriedError(exc), other_main=True))
        return
    _send(out, READY, b"")
    call = sync_caller(fn)
    label = f"isolated pid {os.getpid()}"
    for blob in items:
        _send(out, OUTCOME, _run_one(call, blob, label))


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
