"""What the conformance tests run, on every backend, and how they look at it afterwards.

The item functions are ``Job`` objects (``AJob`` for the ``async def``
twin): the item chooses the behaviour (fail, fail once, hang, nap), and every
call is logged to a file in the job's folder, so that calls made in a worker
process or on a Dask worker are counted like the others. Nothing here keeps
state in memory. The module is pickled by value (worker processes and Dask
workers cannot import the tests folder).

Synchronisation is by marker files, never by sleeping: a hung item waits
for ``release`` (written by the test when it is done, so an abandoned
thread ends); a rendezvous waits until enough items have started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

import conformance_kit

cloudpickle.register_pickle_by_value(conformance_kit)

#: every backend, and auto
BACKENDS = ("sequential", "threads", "asyncio", "processes", "dask", "auto")
#: the longest a marker-file wait lasts before it gives up (a broken test
#: must fail, not hang: the per-test timeout is the last resort)
PATIENCE = 20.0
_POLL = 0.005


@dataclass(frozen=True)
class Call:
    """One call of a job's function, as logged."""

    item: int
    pid: int
    thread: str
    start: float  # time.monotonic(): one clock for every process of this machine
    end: float

    @property
    def worker(self) -> tuple[int, str]:
        return (self.pid, self.thread)


def _append(path: Path, line: str) -> None:
    # One write of a short line with O_APPEND: lines from several processes
    # never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _first_time(path: Path) -> bool:
    """True the first time it is asked for ``path`` (in any process)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


@dataclass(frozen=True)
class Job:
    """``x -> x * 10``, with behaviour chosen by the item.

    fail: items that raise ``ValueError`` on every attempt.
    flaky: items that raise ``ConnectionError`` on their first attempt only.
    hang: items that wait for the release marker (then return).
    hang_once: items that hang on their first attempt only.
    exit: items that raise ``SystemExit``.
    crash: items that kill their own process, as ``how`` says: ``exit``
        (``os._exit``), ``kill`` (SIGKILL) or ``segfault``; in the process
        ``spare`` (the caller's pid) they raise ``RuntimeError`` instead.
    nap: seconds every item takes (simulated work, not synchronisation).
    burn: CPU seconds every item spends (so that auto sees CPU-bound work).
    meet: items wait until this many items have started (a rendezvous).
    after: item -> another item it waits for (finishes after it).
    until: item -> the name of a marker file (in the folder) it waits for.
    """

    folder: str
    fail: frozenset[int] = frozenset()
    flaky: frozenset[int] = frozenset()
    hang: frozenset[int] = frozenset()
    hang_once: frozenset[int] = frozenset()
    exit: frozenset[int] = frozenset()
    crash: frozenset[int] = frozenset()
    how: str = "exit"
    spare: int = 0
    nap: float = 0.0
    burn: float = 0.0
    meet: int = 0
    after: dict[int, int] = field(default_factory=dict)
    until: dict[int, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.folder)

    def _begin(self, x: int) -> tuple[float, bool]:
        first = _first_time(Path(self.folder) / f"seen-{x}")
        now = time.monotonic()
        _append(Path(self.folder) / "started.txt", f"{x} {now!r}\n")
        return now, first

    def _end(self, x: int, start: float) -> int:
        me = f"{os.getpid()} {threading.current_thread().name.replace(' ', '_')}"
        _append(Path(self.folder) / "calls.txt", f"{x} {me} {start!r} {time.monotonic()!r}\n")
        if x in self.fail:
            raise ValueError(f"item {x} is bad")
        return x * 10

    def _check(self, x: int, first: bool) -> float:
        """Raise for items that fail now; return the seconds to wait for (inf: hang)."""
        if x in self.exit:
            raise SystemExit(f"item {x} exits")
        if x in self.crash:
            if os.getpid() == self.spare:
                raise RuntimeError(f"item {x} would have killed the caller's process")
            die(self.how)
        if self.burn:
            t0 = time.thread_time()
            while time.thread_time() - t0 < self.burn:
                pass
        if x in self.flaky and first:
            raise ConnectionError(f"item {x}: transient")
        if x in self.hang or (x in self.hang_once and first):
            return float("inf")
        return self.nap

    def __call__(self, x: int) -> int:
        start, first = self._begin(x)
        wait = self._check(x, first)
        if wait == float("inf"):
            wait_for(Path(self.folder) / "release")
        elif wait:
            time.sleep(wait)  # the item's work
        if self.meet:
            wait_for(Path(self.folder) / "started.txt", lines=self.meet)
        if x in self.after:
            wait_for(Path(self.folder) / "calls.txt", item=self.after[x])
        if x in self.until:
            wait_for(Path(self.folder) / self.until[x])
        return self._end(x, start)


@dataclass(frozen=True)
class AJob(Job):
    """``Job`` as an ``async def``: waits without blocking the loop."""

    def __hash__(self) -> int:
        return hash(self.folder)

    async def __call__(self, x: int) -> int:  # type: ignore[override]
        start, first = self._begin(x)
        wait = self._check(x, first)
        if wait == float("inf"):
            await await_for(Path(self.folder) / "release")
        elif wait:
            await asyncio.sleep(wait)
        if self.meet:
            await await_for(Path(self.folder) / "started.txt", lines=self.meet)
        if x in self.after:
            await await_for(Path(self.folder) / "calls.txt", item=self.after[x])
        if x in self.until:
            await await_for(Path(self.folder) / self.until[x])
        return self._end(x, start)


def die(how: str) -> None:
    """End this process at once, the way ``how`` says."""
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    raise AssertionError(f"unknown way to die: {how}")


# ------------------------------------------------- what cannot cross a process boundary
def _refuse_to_load() -> None:
    raise RuntimeError("this object refuses to be unpickled")


class Unloadable:
    """Pickles fine; unpickling it raises (in the worker, or in the driver)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())

    def __repr__(self) -> str:
        return "Unloadable()"


class Grumpy(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@dataclass(frozen=True)
class Cross:
    """``x -> x``, except: the item ``value`` returns ``what`` (``"lock"``:
    a value that cannot be pickled; ``"unloadable"``: one that cannot be
    unpickled), and the item ``grumpy`` raises ``Grumpy``."""

    value: int = -1
    what: str = ""
    grumpy: int = -1

    def __call__(self, x: Any) -> Any:
        if x == self.grumpy:
            raise Grumpy(f"item {x} is grumpy")
        if x == self.value:
            return threading.Lock() if self.what == "lock" else Unloadable()
        return x


def _there(path: Path, lines: int, item: int | None) -> bool:
    if not path.exists():
        return False
    if item is not None:
        return any(line.split()[0] == str(item) for line in path.read_text().splitlines())
    return lines == 0 or len(path.read_text().splitlines()) >= lines


def wait_for(path: Path, lines: int = 0, item: int | None = None) -> None:
    """Block until ``path`` exists (with ``lines`` lines, or a line of ``item``)."""
    deadline = time.monotonic() + PATIENCE
    while not _there(path, lines, item) and time.monotonic() < deadline:
        time.sleep(_POLL)


async def await_for(path: Path, lines: int = 0, item: int | None = None) -> None:
    deadline = time.monotonic() + PATIENCE
    while not _there(path, lines, item) and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)


def job_for(backend: str, folder: Path, **behaviour: Any) -> Job:
    """The job to run on ``backend``: the ``async def`` twin on asyncio (a
    plain function there runs on the loop and blocks it), else the plain one.

    For auto, items take 1 ms of waiting unless told otherwise: the logging
    alone costs about the 200 us that separates "tiny, run inline" from the
    rest, so auto's choice would change from run to run. Items that mostly
    wait, a few dozen of them (far less than the 0.1 s of work that starts
    workers), make it go on inline every time, after probing the first item
    on a thread. (Tests that want auto to choose threads or processes give
    it more work, or CPU-bound items.)
    """
    cls = AJob if backend == "asyncio" else Job
    if backend == "auto":
        behaviour.setdefault("nap", 0.001)
    fields: dict[str, Any] = {k: frozenset(v) if isinstance(v, (set, list, range)) else v
                              for k, v in behaviour.items()}
    return cls(str(folder), **fields)


def calls(folder: Path) -> list[Call]:
    path = folder / "calls.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        item, pid, thread, start, end = line.split()
        out.append(Call(int(item), int(pid), thread, float(start), float(end)))
    return out


def attempts(folder: Path) -> list[tuple[int, float]]:
    """(item, when it started) of every attempt, in the order they started."""
    path = folder / "started.txt"
    if not path.exists():
        return []
    pairs = [line.split() for line in path.read_text().splitlines()]
    return sorted(((int(x), float(t)) for x, t in pairs), key=lambda p: p[1])


def started(folder: Path) -> list[int]:
    """The items of every attempt, in the order they started."""
    return [x for x, _ in attempts(folder)]


def note_init(path: str) -> None:
    """An initializer: logs the worker it runs in, and when."""
    me = f"{os.getpid()} {threading.current_thread().name.replace(' ', '_')}"
    _append(Path(path), f"{me} {time.monotonic()!r}\n")


def inits(path: Path) -> list[tuple[tuple[int, str], float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, thread, t = line.split()
        out.append(((int(pid), thread), float(t)))
    return out


def rate_holds(starts: list[float], per_second: float, burst: int, slack: float) -> bool:
    """Whether every window of the sorted ``starts`` holds at most
    ``burst + per_second * (its length + slack)`` of them (``slack``: seconds
    by which a start seen in a worker may lag behind the grant)."""
    starts = sorted(starts)
    return all(j - i + 1 <= burst + per_second * (starts[j] - starts[i] + slack) + 1e-9
               for i in range(len(starts)) for j in range(i + 1, len(starts)))


def peak_concurrency(log: list[Call]) -> int:
    """The most calls that were running at one moment."""
    edges = sorted([(c.start, 1) for c in log] + [(c.end, -1) for c in log])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def release(folder: Path) -> None:
    (folder / "release").touch()


def backend_opts(request: Any, backend: str) -> dict[str, Any]:
    """Options selecting ``backend`` (on dask: the session cluster's address)."""
    if backend == "auto":
        return {"backend": "auto"}
    opts: dict[str, Any] = {"backend": backend}
    if backend == "dask":
        opts["address"] = request.getfixturevalue("dask_cluster").scheduler_address
    return opts


def every(xfail: dict[str, str] | None = None, only: tuple[str, ...] = BACKENDS,
          flaky: dict[str, str] | None = None) -> list[Any]:
    """``only`` as parameters, with ``xfail[backend]`` as a strict xfail
    reason; ``flaky[backend]``: a race that fails some runs only, which a
    strict xfail cannot express (an XPASS would fail the suite)."""
    import pytest

    out = []
    for name in only:
        marks = []
        if name in (xfail or {}):
            marks.append(pytest.mark.xfail(strict=True, reason=(xfail or {})[name]))
        if name in (flaky or {}):
            marks.append(pytest.mark.xfail(strict=False, reason=(flaky or {})[name]))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


# ------------------------------------------------------------ processes
def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def new_children(before: set[psutil.Process], allowed: set[int] = frozenset(),  # type: ignore[assignment]
                 timeout: float = 10.0) -> list[psutil.Process]:
    """Child processes started since ``before`` that are still alive after
    ``timeout`` (a worker being reaped gets that long), except ``allowed`` pids."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p not in before and p.pid not in allowed and _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def wait_gone(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """The processes of ``procs`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def dask_worker_pids(opts: dict[str, Any], workers: int = 2) -> set[int]:
    """The pids of the worker processes of the cluster in ``opts`` (none off
    Dask), once it has ``workers`` of them: a nanny restarts a worker that died."""
    if opts.get("backend") != "dask":
        return set()
    from distributed import Client

    with Client(opts["address"], timeout=10) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(workers, timeout=30)
        return set(client.run(os.getpid).values())


def iterate(items: list[Any], fail_at: int | None = None) -> Iterator[Any]:
    """A generator over ``items`` that raises ``OSError`` before ``fail_at``."""
    for k, item in enumerate(items):
        if k == fail_at:
            raise OSError(f"input broke at {k}")
        yield item
