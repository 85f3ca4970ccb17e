"""The conformance matrix of the faults: on every backend where a fault can
occur, each item gets exactly one result, innocent items succeed, nothing
hangs and no child process survives.

* A worker that dies (``os._exit``, SIGKILL, a segfault) can only be
  survived where items run in another process: processes, dask, and auto
  when it chooses processes (CPU-bound items; run from a driver script, so
  that an item probed on a thread could never kill the test session). On
  sequential, threads and asyncio the item runs in the caller's process,
  which it takes down: the fault does not apply there.
* Pickling faults apply where items cross to another process; elsewhere
  nothing is pickled, and the same items simply run.
* A hang past its timeout, a retry predicate that raises, ``SystemExit``
  in an item and an input iterator that raises midway apply everywhere.

The killing cases on dask use a cluster of their own (module-scoped), so the
session cluster the other tests share keeps its workers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import conformance_kit as kit
import shoal
from shoal import NotPicklable, RemoteError, RetryPolicy, WorkerCrashed

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).parent
IN_PROCESS = ("sequential", "threads", "asyncio")

DASK_UNPICKLE = "dask: {} that cannot be unpickled fails alone, but with the raw error of " \
                "its unpickling (RuntimeError), not NotPicklable as on processes, issue 11"
SLOW_FIRST_CHUNK = "{}: the first pull of a chunk of several items blocks in the input's " \
                   "next() until the chunk is full, so item 0 is yielded only when record 1 " \
                   "arrives (core: source.IterSource moves to its reader thread only after " \
                   "a pull stalled), issue 12"
DASK_NEIGHBOUR = "dask: a worker that dies also fails an innocent item queued behind the " \
                 "killer on it, with WorkerCrashed (KilledWorker; docs/dask.md: only the item " \
                 "that kills workers fails), issue 11"


@pytest.fixture(scope="module")
def killing_cluster() -> Iterator[Any]:
    """A Dask cluster whose workers these tests may kill."""
    distributed = pytest.importorskip("distributed")
    import dask

    # allowed-failures=0: a task whose worker died fails at once, rather than
    # being run again by Dask itself on the next worker (which it kills too).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=50,
        )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "job"
    d.mkdir()
    yield d
    kit.release(d)


@pytest.fixture
def opts(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    return kit.backend_opts(request, backend)


@pytest.fixture
def no_child_left(opts: dict[str, Any]) -> Iterator[None]:
    """After the test no new child process is alive (Dask's own workers,
    restarted by their nannies, excepted)."""
    before = set(psutil.Process().children(recursive=True))
    yield
    allowed = kit.dask_worker_pids(opts)
    assert kit.new_children(before, allowed) == [], "a child process survived the run"


def outcomes(report: shoal.BatchReport[Any]) -> list[Any]:
    return [r.value if r.ok else type(r.error).__name__ for r in report.results]


# ------------------------------------------------------------------ dying workers
def _ready(cluster: Any) -> dict[str, Any]:
    """Options for the killing cluster, once both its workers are up (a
    worker killed by the previous test is being restarted by its nanny)."""
    opts = {"backend": "dask", "address": cluster.scheduler_address}
    kit.dask_worker_pids(opts)  # waits for them
    return opts


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
@pytest.mark.parametrize("backend", kit.every(only=("processes", "dask")))
def test_a_dying_worker_fails_only_its_item(backend: str, how: str, folder: Path,
                                            request: pytest.FixtureRequest) -> None:
    opts = (_ready(request.getfixturevalue("killing_cluster")) if backend == "dask"
            else {"backend": backend})
    before = set(psutil.Process().children(recursive=True))
    report = shoal.run(kit.Job(str(folder), crash=frozenset({3}), how=how), range(8), **opts)
    assert [r.index for r in report.results] == list(range(8))
    assert outcomes(report) == [0, 10, 20, "WorkerCrashed", 40, 50, 60, 70]
    assert isinstance(report.results[3].error, WorkerCrashed)
    assert kit.new_children(before, kit.dask_worker_pids(opts)) == []


_AUTO_DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import shoal, conformance_kit as kit
job = kit.Job(sys.argv[2], crash=frozenset({int(sys.argv[3])}), how=sys.argv[4], burn=0.004,
              spare=os.getpid())
report = shoal.run(job, range(60))
print(json.dumps({"backend": report.backend, "reason": report.backend_reason,
                  "outcomes": [r.value if r.ok else type(r.error).__name__
                               for r in report.results]}))
"""


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
@pytest.mark.parametrize("crash", [2, 40])
def test_auto_isolates_a_dying_worker_when_it_chooses_processes(how: str, crash: int,
                                                                folder: Path) -> None:
    """CPU-bound items of some size: auto probes them in a worker process and
    chooses processes, where a crash costs one item (item 0 is probed on a
    thread, so the crash is a later item: one probed in the process, or one
    run by the chosen backend).

    auto measures CPU time against wall time: on a machine busy enough that
    CPU-bound items get less than half a core, it sees work that waits and
    chooses threads, which isolate nothing. The item then only says it would
    have killed the caller (``Job.spare``), and the case is skipped, since
    it tests nothing; a crash in the caller's process under a choice of
    processes fails it.
    """
    proc = subprocess.run([sys.executable, "-c", _AUTO_DRIVER, str(TESTS), str(folder),
                           str(crash), how], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    if out["backend"] != "processes":
        pytest.skip(f"this machine is too busy for auto to see CPU-bound work: {out['reason']}")
    expected: list[Any] = [x * 10 for x in range(60)]
    expected[crash] = "WorkerCrashed"
    assert out["outcomes"] == expected


# ------------------------------------------------------------------ a hang past its timeout
@pytest.mark.parametrize("backend", kit.every())
def test_a_hung_item_leaves_nothing_behind(backend: str, opts: dict[str, Any], folder: Path,
                                           no_child_left: None) -> None:
    report = shoal.run(kit.job_for(backend, folder, hang={1, 4}), range(6), timeout=0.4, **opts)
    assert outcomes(report) == [0, "TimeoutError", 20, 30, "TimeoutError", 50]


# ------------------------------------------------------------------ what cannot cross
def _cross(backend: str) -> bool:
    return backend in ("processes", "dask")


@pytest.mark.parametrize("backend", kit.every())
def test_an_item_that_cannot_be_pickled(backend: str, opts: dict[str, Any],
                                        no_child_left: None) -> None:
    lock = threading.Lock()
    report = shoal.run(kit.Cross(), [0, 1, lock, 3], **opts)
    _only_item_2_fails_if_it_crosses(backend, report, lock, NotPicklable, "cannot be pickled")


@pytest.mark.parametrize("backend", kit.every())
def test_an_item_that_cannot_be_unpickled(backend: str, opts: dict[str, Any],
                                          no_child_left: None) -> None:
    bad = kit.Unloadable()
    report = shoal.run(kit.Cross(), [0, 1, bad, 3], **opts)
    _only_item_2_fails_if_it_crosses(backend, report, bad, NotPicklable, "unpickled")


@pytest.mark.parametrize("backend", kit.every())
def test_a_value_that_cannot_be_pickled(backend: str, opts: dict[str, Any],
                                        no_child_left: None) -> None:
    report = shoal.run(kit.Cross(value=2, what="lock"), range(4), **opts)
    _only_item_2_fails_if_it_crosses(backend, report, None, NotPicklable, "cannot be pickled")


@pytest.mark.parametrize("backend", kit.every())
def test_a_value_that_cannot_be_unpickled(backend: str, opts: dict[str, Any],
                                          no_child_left: None) -> None:
    report = shoal.run(kit.Cross(value=2, what="unloadable"), range(4), **opts)
    _only_item_2_fails_if_it_crosses(backend, report, None, NotPicklable, "unpickled")


@pytest.mark.parametrize("backend", kit.every())
def test_an_exception_that_cannot_be_pickled(backend: str, opts: dict[str, Any],
                                             no_child_left: None) -> None:
    """It arrives as the one documented type, RemoteError, with its type
    name and message; in the caller's process it is the exception itself."""
    report = shoal.run(kit.Cross(grumpy=2), range(4), **opts)
    assert [r.ok for r in report.results] == [True, True, False, True]
    assert report.values == [0, 1, 3]
    error = report.results[2].error
    assert "item 2 is grumpy" in str(error)
    assert isinstance(error, RemoteError if _cross(backend) else kit.Grumpy)


def _only_item_2_fails_if_it_crosses(backend: str, report: shoal.BatchReport[Any], item: Any,
                                     error: type[BaseException], says: str) -> None:
    assert [r.index for r in report.results] == [0, 1, 2, 3]
    assert [report.results[k].value for k in (0, 1, 3)] == [0, 1, 3]
    r = report.results[2]
    if _cross(backend):
        assert not r.ok and isinstance(r.error, error) and says in str(r.error)
    else:  # nothing is pickled: the item runs like any other
        assert r.ok
        if item is not None:
            assert r.value is item


# ------------------------------------------------------------------ what raises
@pytest.mark.parametrize("backend", kit.every())
def test_a_retry_predicate_that_raises_fails_its_item(backend: str, opts: dict[str, Any],
                                                      folder: Path) -> None:
    def predicate(error: BaseException) -> bool:
        raise RuntimeError("the predicate broke")

    job = kit.job_for(backend, folder, fail={2})
    report = shoal.run(job, range(5), retries=RetryPolicy(2, backoff=0, predicate=predicate),
                       **opts)
    assert outcomes(report) == [0, 10, "RuntimeError", 30, 40]
    error = report.results[2].error
    assert error is not None and isinstance(error.__context__, ValueError)  # what it decided on
    assert "raised by the retry policy while deciding whether to retry item 2" in "".join(
        getattr(error, "__notes__", []))
    assert Counter(kit.started(folder)) == Counter(range(5))  # nothing retried


@pytest.mark.parametrize("backend", kit.every())
def test_system_exit_in_an_item_fails_that_item(backend: str, opts: dict[str, Any],
                                                folder: Path, no_child_left: None) -> None:
    report = shoal.run(kit.job_for(backend, folder, exit={2}), range(6), **opts)
    assert outcomes(report) == [0, 10, "SystemExit", 30, 40, 50]
    assert "item 2 exits" in str(report.results[2].error)


@pytest.mark.parametrize("backend", kit.every())
@pytest.mark.parametrize("ordered", [True, False])
def test_an_input_that_raises_midway(backend: str, ordered: bool, opts: dict[str, Any],
                                     folder: Path) -> None:
    """What the input gave before its error is run and delivered, then its error."""
    got: list[int] = []
    job = kit.job_for(backend, folder)
    with pytest.raises(OSError, match="input broke at 6"):
        for r in shoal.imap(job, kit.iterate(list(range(10)), fail_at=6), ordered=ordered,
                            **opts):
            assert r.ok
            got.append(r.index)
    assert sorted(got) == list(range(6))
    with pytest.raises(OSError, match="input broke at 6"):
        shoal.run(job, kit.iterate(list(range(10)), fail_at=6), **opts)


def test_an_input_that_raises_midway_under_an_async_consumer(folder: Path) -> None:
    import asyncio

    job = kit.job_for("asyncio", folder)

    async def consume() -> list[int]:
        got: list[int] = []
        with pytest.raises(OSError, match="input broke at 6"):
            async for r in shoal.aimap(job, kit.iterate(list(range(10)), fail_at=6),
                                       backend="asyncio"):
                got.append(r.index)
        return got

    assert asyncio.run(consume()) == list(range(6))


# ------------------------------------------------------------------ Ctrl-C
_CTRL_C_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import shoal, conformance_kit as kit
from pathlib import Path
folder, backend, call, chunk = Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
hang = frozenset(json.loads(sys.argv[6]))

class Received:  # tells the test which results reached this process
    def on_start(self, info): pass
    def on_results(self, results):
        for r in results:
            kit._append(folder / "received.txt", f"{r.index}\\n")
    def on_finish(self, report): pass

job = kit.AJob(str(folder), hang=hang)
try:
    getattr(shoal, call)(job, range(20), backend=backend, workers=2, chunk_size=chunk,
                         progress=Received())
except shoal.BatchInterrupted as e:
    print(json.dumps({"ok": [r.index for r in e.report.results if r.ok],
                      "failed": [r.index for r in e.report.results if not r.ok],
                      "interrupted": e.report.interrupted,
                      "keyboard": isinstance(e, KeyboardInterrupt)}), flush=True)
"""

MAP_LOSES = "{}: BatchInterrupted.report of shoal.map holds only what was not yet delivered: " \
            "the results map already took are dropped (it keeps no report: Run.deliver(keep=" \
            "False)), issue 12"
CHUNK_LOST = "sequential: the results of items finished in the chunk running at Ctrl-C are " \
             "lost (run_chunk re-raises KeyboardInterrupt without reporting what it " \
             "finished), issue 12"


def _interrupt(folder: Path, backend: str, call: str, chunk: int, wait_received: bool,
               hang: range | set[int] = range(5, 20)) -> tuple[dict[str, Any], set[int]]:
    """Start the driver over 20 items, ``hang`` of which hang; once the others
    have finished (and, if asked, been received), SIGINT it. Its answer, and
    the items the test knew had finished (and been received)."""
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_DRIVER, str(TESTS), str(folder),
                             backend, call, str(chunk), json.dumps(sorted(hang))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finishing = 20 - len(hang)
    try:
        kit.wait_for(folder / "calls.txt", lines=finishing)
        if wait_received:
            kit.wait_for(folder / "received.txt", lines=finishing)
        finished = {c.item for c in kit.calls(folder)}
        if wait_received:
            finished &= {int(x) for x in (folder / "received.txt").read_text().split()}
        children = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 5, "Ctrl-C did not stop the run promptly"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert kit.wait_gone(children) == [], "a worker process survived Ctrl-C"
    return json.loads(out), finished


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "processes"])
@pytest.mark.parametrize("call", ["run", "map"])
def test_ctrl_c_of_an_async_def_raises_batch_interrupted_with_what_finished(
    backend: str, call: str, folder: Path
) -> None:
    """A real SIGINT to a driver running an ``async def`` over 20 items, 15 of
    which hang: it raises BatchInterrupted (a KeyboardInterrupt) whose report
    holds every result the driver had received, promptly, and no worker
    process survives. One item per chunk, so that a finished item is
    received at once (see the next test for a chunk cut short)."""
    answer, finished = _interrupt(folder, backend, call, chunk=1, wait_received=True)
    assert answer["interrupted"] and answer["keyboard"]
    assert len(finished) >= 5
    assert set(answer["ok"]) >= finished
    assert answer["failed"] == []  # the items cut short are not failures


@pytest.mark.parametrize("backend", ["threads", "asyncio", "processes"])
def test_ctrl_c_keeps_what_finished_behind_a_hung_item(backend: str, folder: Path) -> None:
    """Items 6-19 finish while item 5 hangs: in input order none of them can
    be delivered, yet the report holds them. (On asyncio the partial report
    was built twice, and the second had lost them.)"""
    answer, finished = _interrupt(folder, backend, "run", chunk=1, wait_received=True,
                                  hang={5})
    assert finished == set(range(20)) - {5}
    assert set(answer["ok"]) == finished


def test_ctrl_c_keeps_what_finished_in_the_chunk_it_cut_short(folder: Path) -> None:
    """Items 0-4 finish and item 5 hangs in the same chunk of 8."""
    answer, finished = _interrupt(folder, "sequential", "run", chunk=8, wait_received=False)
    assert finished == set(range(5))
    assert set(answer["ok"]) >= finished


# ------------------------------------------------------------------ a slow input
@pytest.mark.parametrize("backend", kit.every())
def test_a_slow_input_streams(backend: str, opts: dict[str, Any], folder: Path) -> None:
    """A source that yields one record every 0.25 s (a pipe, a socket): each
    result is yielded within 0.1 s of its item finishing (issue 12), not held
    until a chunk's worth of records has arrived."""
    def slow() -> Iterator[int]:
        for i in range(5):
            if i:
                time.sleep(0.25)  # the source's own pace, not synchronisation
            yield i

    received: dict[int, float] = {}
    for r in shoal.imap(kit.job_for(backend, folder), slow(), **opts):
        received[r.index] = time.monotonic()
    ended = {c.item: c.end for c in kit.calls(folder)}
    assert sorted(received) == list(range(5))
    late = {i: round(received[i] - ended[i], 3) for i in received if received[i] - ended[i] > 0.1}
    assert late == {}, f"results yielded more than 0.1 s after their item finished: {late}"
