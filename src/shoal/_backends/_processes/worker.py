"""A worker process of ``backend="processes"``: runs the chunks the driver sends.

A worker is forked by the fork server (``forkserver.py``), in a process
group of its own, so that it and every process an item starts can be killed
together (``killpg``). It runs the initializer once, says ``READY``, then serves runs
one after the other for as long as the pool keeps it: each run is a *job*
(``JOB`` frame: ``fn`` and the run's options), sent once per worker per run,
followed by chunks of items. A worker ends when the driver closes its socket
(retired, or the pool closed) or is killed (a timeout, a cancelled run).

**Per-worker state from ``__main__``.** An initializer and a ``fn`` defined
in a script or a notebook cross by value (cloudpickle), each with a globals
dict of its own, so a global the initializer sets would be invisible to
``fn``. When they share their globals in the driver (the job's
``JOB_SHARES_INIT_GLOBALS``), the worker puts what the initializer's globals
hold, as it left them, into ``fn``'s globals when the job arrives: the
initializer's globals belong to the worker, every other global comes from
the driver with ``fn``, each run.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from shoal._backends._processes.protocol import (
    BATCH_DONE,
    FATAL,
    ITEM_DONE,
    ITEM_STOPPED,
    JOB,
    JOB_FAILED,
    JOB_FAILURE_ENDS_RUN,
    JOB_SHARES_INIT_GLOBALS,
    JOB_STOP_ON_ERROR,
    READY,
    RUN_BATCH,
    UNREADABLE,
    Claims,
    StopFlag,
    encode_batch,
    encode_error,
    read_job,
    recv_frame,
    send_frame,
)
from shoal._core.calling import Outcome, run_chunk, sync_caller
from shoal._core.errors import NotPicklable


def unwrap_partial(fn: Any) -> Any:
    """The function inside any ``functools.partial`` layers."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


#: with all_or_nothing, how often (seconds of items) a worker running a chunk
#: looks at the stop flag; items that take longer are checked one by one
CHECK_EVERY = 0.001
#: ... except that the rest of a chunk of tiny items (under a tenth of that
#: each) that takes at most this long runs without another look: the chunk
#: policy aims at ~20 ms chunks, and a look per stretch costs a copy per item
REST_AT_ONCE = 0.02


class _Job:
    """The run a worker is serving: ``fn`` as called, and the run's options."""

    __slots__ = ("call", "ends_run", "id", "stop_on_error")

    def __init__(self, job: int, call: Callable[[Any], Any], flags: int) -> None:
        self.id = job
        self.call = call
        self.stop_on_error = bool(flags & JOB_STOP_ON_ERROR)
        self.ends_run = bool(flags & JOB_FAILURE_ENDS_RUN)


def _load_job(body: bytearray, init_globals: dict[str, Any] | None) -> _Job:
    """The job of a JOB frame, ``fn`` bound to the worker's state.

    Raises:
        Exception: ``fn`` does not unpickle here.
    """
    job, flags, fn = read_job(body)
    if flags & JOB_SHARES_INIT_GLOBALS and init_globals is not None:
        fn_globals = getattr(unwrap_partial(fn), "__globals__", None)
        if isinstance(fn_globals, dict) and fn_globals is not init_globals:
            fn_globals.update((k, v) for k, v in init_globals.items() if k != "__builtins__")
    return _Job(job, sync_caller(fn), flags)


def run_stoppable(call: Callable[[Any], Any], items: Sequence[Any],
                  stopped: Callable[[], bool]) -> Outcome:
    """``run_chunk(stop_on_error=True)`` that also stops when ``stopped()`` says so.

    ``stopped`` is asked between stretches of items of about ``CHECK_EVERY``
    seconds, growing from one item, so a slow item is never started once the
    run has failed; tiny items run in a few stretches (``REST_AT_ONCE``), so
    that they pay next to nothing for it.
    """
    done = 0
    size = 1
    out: Outcome | None = None
    while done < len(items):
        if stopped():
            break
        if out is not None and out.values:
            per_item = out.duration / len(out.values)
            rest = len(items) - done
            if per_item < CHECK_EVERY / 10 and per_item * rest <= REST_AT_ONCE:
                size = rest
        # The rest in one go is an islice (a list's slice would copy it); a
        # stretch, a slice (map over a list or range is the fastest loop).
        stretch = items[done : done + size] if size < len(items) - done else (
            itertools.islice(items, done, None))
        part = run_chunk(call, stretch, "", stop_on_error=True)
        ran, took, stop = len(part.values), part.duration, part.stopped
        out = part if out is None else _joined(out, part)  # may take over part's list
        done += ran
        if stop:
            break
        # The next stretch: about CHECK_EVERY seconds of items, at most 4x this one.
        per_item = took / ran
        fits = int(CHECK_EVERY / per_item) if per_item > 0 else size * 4
        size = max(1, min(size * 4, fits))
    if out is None:
        out = Outcome([], None, 0.0, "", cpu=0.0)
    out.stopped = done < len(items)
    return out


def _joined(head: Outcome, tail: Outcome) -> Outcome:
    """The outcome of ``head``'s items followed by ``tail``'s."""
    offset = len(head.values)
    if len(tail.values) > offset:  # move the shorter list's pointers, not the longer's
        tail.values[:0] = head.values
        values = tail.values
    else:
        head.values.extend(tail.values)
        values = head.values
    errors = head.errors
    if tail.errors:
        errors = {**(errors or {}), **{offset + k: e for k, e in tail.errors.items()}}
    cpu = None if head.cpu is None or tail.cpu is None else head.cpu + tail.cpu
    return Outcome(values, errors, head.duration + tail.duration, "", cpu=cpu,
                   stopped=tail.stopped)


def _serve(sock: socket.socket, claim_fd: int, stop: StopFlag, init_blob: bytes | None) -> None:
    init_globals: dict[str, Any] | None = None
    try:
        if init_blob is not None:
            init, initargs = pickle.loads(init_blob)
            init_globals = getattr(unwrap_partial(init), "__globals__", None)
            init(*initargs)
    except Exception as exc:
        send_frame(sock, FATAL, encode_error(exc))
        return
    send_frame(sock, READY, b"")
    claims = Claims(claim_fd)
    job: _Job | None = None
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return  # the driver closed the socket: retire
        kind, body = frame
        if kind == JOB:
            try:
                job = _load_job(body, init_globals)
            except (Exception, SystemExit) as exc:
                job = None  # the driver fails the run; its chunks are skipped
                send_frame(sock, JOB_FAILED, encode_error(exc))
            continue
        if not claims.claim_next() or job is None:
            continue  # taken back for an idle worker, or of a job that failed: no answer
        try:
            items: Sequence[Any] = pickle.loads(body)
        except (Exception, SystemExit) as exc:
            _fail_unreadable(sock, exc)
            continue
        run_stopped = functools.partial(stop.stopped, job.id)
        if kind == RUN_BATCH:
            out = run_stoppable(job.call, items, run_stopped) if job.stop_on_error else (
                run_chunk(job.call, items, ""))
            _end_run_if_failed(job, out, stop)
            send_frame(sock, BATCH_DONE, encode_batch(out.values, out.errors, out.duration,
                                                      out.cpu, out.stopped))
            continue
        for item in items:  # RUN_STREAM
            if job.stop_on_error and run_stopped():
                send_frame(sock, ITEM_STOPPED, encode_batch([], None, 0.0, 0.0, True))
                break
            out = run_chunk(job.call, (item,), "", stop_on_error=job.stop_on_error)
            _end_run_if_failed(job, out, stop)
            send_frame(sock, ITEM_STOPPED if out.stopped else ITEM_DONE, encode_batch(
                out.values, out.errors, out.duration, out.cpu, out.stopped))
            if out.stopped:
                break


def _end_run_if_failed(job: _Job, out: Outcome, stop: StopFlag) -> None:
    """all_or_nothing without retries: an item failed, so the run is over;
    tell every worker now, not once the driver has read the report. The flag
    is set before the report is sent, so that the driver, which may have to
    clear it when the report does not unpickle (``Hub._rerun``), always
    clears it after it was set. Until the report is read, workers that stop
    give their chunks back and may be sent them again: a moment's churn."""
    if job.ends_run and out.errors:
        stop.stop(job.id)


def _fail_unreadable(sock: socket.socket, exc: BaseException) -> None:
    # The chunk pickled in the driver but does not unpickle here (a class the
    # worker cannot import, say): the driver finds the item that does not.
    error = NotPicklable(
        f"the items could not be unpickled in the worker: {type(exc).__name__}: {exc}"
    )
    send_frame(sock, UNREADABLE, encode_error(error))


def worker_main(sock: socket.socket, claim_fd: int, stop_fd: int,
                init_blob: bytes | None) -> NoReturn:
    """Run a worker until its socket closes; never returns.

    ``SystemExit`` raised by an item is that item's failure (``run_chunk``);
    one raised by the initializer ends the worker with its exit code, which
    the driver counts as a worker that died while starting.
    """
    code = 0
    try:
        _serve(sock, claim_fd, StopFlag(stop_fd), init_blob)
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
