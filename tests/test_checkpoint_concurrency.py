"""The checkpoint store under concurrency: one run at a time, commits by the
clock, results recorded in any order (issue 12)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._core.errors import CheckpointInUse
from shoal._core.results import ItemResult
from shoal._sinks.checkpoint import open_checkpoint
from shoal._sinks.checkpoint import store as _store
from shoal._sinks.checkpoint.format import INSERT_ROW

JOB = '''
def job(x):
    return {"x": x}
'''


def _job() -> Any:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(JOB, "<job>", "exec"), ns)
    return ns["job"]


def job(x: int) -> int:
    return x


def _ok(i: int, value: Any = None) -> ItemResult[Any]:
    return ItemResult(i, i, ok=True, value=i if value is None else value, worker="w",
                      started=1000.0 + i)


def _committed(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def _wait_until(cond: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # polling state another process writes
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- one run at a time ------------------------------------------------------------------


def test_a_second_open_in_this_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    store = open_checkpoint(path, job)
    assert Path(f"{path}.lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(CheckpointInUse, match="already open in this process") as info:
        open_checkpoint(path, job)
    assert info.value.pid == os.getpid() and info.value.path == path
    store.record([_ok(0)])  # the refusal did not disturb the open store
    store.close()
    assert not Path(f"{path}.lock").exists()
    with open_checkpoint(path, job) as again:
        assert again.restore(0, 0) is not None


OPEN_AND_WAIT = JOB + '''
import os, sys
from shoal._sinks.checkpoint import open_checkpoint
store = open_checkpoint(sys.argv[1], job)
if len(sys.argv) > 2:  # fork a child that outlives us, holding our descriptors
    child = os.fork()
    if child == 0:
        sys.stdin.readline()
        os._exit(0)
    print(child, flush=True)
print("open", flush=True)
sys.stdin.readline()
'''


def test_another_process_holding_it_is_named_and_a_kill_frees_it(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    path = tmp_path / "run.db"
    holder = _python(OPEN_AND_WAIT, str(path))
    procs.append(holder)
    assert holder.stdout is not None and holder.stdout.readline() == "open\n"
    with pytest.raises(CheckpointInUse) as info:
        open_checkpoint(path, _job())
    assert info.value.pid == holder.pid
    assert f"checkpoint {path} is in use by pid {holder.pid}" in str(info.value)
    assert "wait for that run to finish, or pass another checkpoint path" in str(info.value)

    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays behind
    holder.wait()
    assert Path(f"{path}.lock").exists()
    open_checkpoint(path, _job()).close()


def test_a_forked_child_does_not_keep_the_lock(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    # The process backend forks workers, which may outlive a killed driver a
    # little: they must not make the resume fail with "in use".
    path = tmp_path / "run.db"
    holder = _python(OPEN_AND_WAIT, str(path), "fork")
    procs.append(holder)
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    assert holder.stdout.readline() == "open\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    try:
        os.kill(child, 0)  # still alive, with the lock file open
        open_checkpoint(path, _job()).close()
    finally:
        os.kill(child, signal.SIGKILL)


RACE = JOB + '''
import os, sys
from shoal._core.errors import CheckpointInUse
from shoal._core.results import ItemResult
from shoal._sinks.checkpoint import open_checkpoint
print("ready", flush=True)
sys.stdin.readline()  # both start here at once
try:
    store = open_checkpoint(sys.argv[1], job, batch_size=7)
except CheckpointInUse as exc:
    print(exc.pid, exc, flush=True)
    sys.exit(3)
with store:
    for i in range(100):  # a run: restore what is there, compute the rest
        if store.restore(i, i) is None:
            store.record([ItemResult(i, i, ok=True, value={"x": i, "by": os.getpid()})])
'''


def test_two_processes_opening_one_new_checkpoint_at_once(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    outcomes = set()
    for attempt in range(10):
        path = tmp_path / f"run-{attempt}.db"
        pair = [_python(RACE, str(path)) for _ in range(2)]
        procs.extend(pair)
        for p in pair:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in pair:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in pair]
        codes = sorted(p.returncode for p in pair)
        assert codes in ([0, 0], [0, 3]), results
        outcomes.add(tuple(codes))
        winner = next(p for p in pair if p.returncode == 0)
        for p, (out, _) in zip(pair, results, strict=True):
            if p.returncode == 3:  # the loser names the winner
                assert out.startswith(f"{winner.pid} checkpoint {path} is in use by pid "
                                      f"{winner.pid}"), out
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT idx, value FROM results ORDER BY idx").fetchall()
        finally:
            conn.close()
        assert [i for i, _ in rows] == list(range(100))  # nothing lost
        writers = {json.loads(v)["by"] for _, v in rows}
        assert writers == {winner.pid}  # nothing mixed: one run wrote every row
        assert not Path(f"{path}.lock").exists()
    assert (0, 3) in outcomes  # they did open it at the same moment, at least once


# -- commits by the clock -------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(_store, "_monotonic", lambda: now[0])
    return now


def _poke_and_wait(store: _store.CheckpointStore, cond: Any) -> None:
    """Wake the timer thread (as its wait would time out) and wait for ``cond``."""
    with store._lock:
        store._wake.notify_all()
        assert store._wake.wait_for(lambda: cond(store), timeout=20)


def test_the_timer_commits_when_no_further_result_comes(tmp_path: Path,
                                                        clock: list[float]) -> None:
    path = tmp_path / "run.db"
    store = open_checkpoint(path, job, batch_size=1000, commit_interval=0.5)
    try:
        store.record([_ok(0), _ok(1)])
        assert _committed(path) == 0
        with store._lock:
            assert store._commit_delay_locked() == 0.5
        clock[0] += 0.4
        with store._lock:
            assert store._commit_delay_locked() == pytest.approx(0.1)
        clock[0] += 0.1  # due: no record() call follows, the timer commits
        _poke_and_wait(store, lambda s: s._commits == 1)
        assert _committed(path) == 2
        with store._lock:
            assert store._commit_delay_locked() is None  # nothing buffered: it sleeps
        timer = store._timer
        assert timer is not None and timer.daemon and timer.is_alive()
    finally:
        store.close()
    assert not timer.is_alive()  # stopped and joined by close()


def test_the_timer_holds_by_the_real_clock(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, job, batch_size=1000, commit_interval=0.05) as store:
        store.record([_ok(0)])
        with store._lock:
            assert store._wake.wait_for(lambda: store._commits == 1, timeout=20)
        assert _committed(path) == 1


def test_a_failed_timed_commit_is_retried_and_raised_if_it_persists(
        tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.db"
    store = open_checkpoint(path, job, batch_size=1000, commit_interval=0.5)
    try:
        store.record([_ok(0)])
        monkeypatch.setattr(_store, "INSERT_ROW", "INSERT INTO nowhere VALUES (?)")
        clock[0] += 1
        _poke_and_wait(store, lambda s: s._timer_error is not None)
        with pytest.raises(sqlite3.OperationalError, match="nowhere"):
            store.record([_ok(1)])  # the caller hears of it: the retry failed too
        assert _committed(path) == 0
        monkeypatch.setattr(_store, "INSERT_ROW", INSERT_ROW)
        store.record([_ok(2)])  # the retry works: what the failures kept is written
        assert _committed(path) >= 2 and store._timer_error is None
    finally:
        store.close()
    assert _committed(path) == 3


STALLED = '''
import sys, threading
import shoal

def job(x):
    if x == 5:
        threading.Event().wait()  # a slow item: delivery stops behind it
    return x

it = shoal.imap(job, range(50), checkpoint=sys.argv[1], backend="threads", workers=2,
                chunk_size=1)
if sys.argv[2] == "hold":  # the caller holds the generator after 3 results
    for _ in range(3):
        next(it)
    sys.stdin.readline()
else:
    for r in it:
        pass
'''


@pytest.mark.parametrize("how", ["slow-item", "hold"])
def test_delivered_results_are_committed_while_delivery_stalls(
        tmp_path: Path, procs: list[subprocess.Popen[str]], how: str) -> None:
    path = tmp_path / "run.db"
    proc = _python(STALLED, str(path), how)
    procs.append(proc)
    want = 5 if how == "slow-item" else 3
    _wait_until(lambda: _committed(path) >= want or proc.poll() is not None,
                f"{want} committed rows")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _committed(path) >= want


# -- results in any order -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(list(range(30))), cuts=st.lists(st.integers(0, 30), max_size=6),
       failed=st.sets(st.integers(0, 29)), probes=st.lists(st.integers(0, 29), max_size=10))
def test_results_recorded_in_any_order_restore_exactly(
        tmp_path_factory: pytest.TempPathFactory, order: list[int], cuts: list[int],
        failed: set[int], probes: list[int]) -> None:
    path = tmp_path_factory.mktemp("order") / "run.db"

    def result(i: int) -> ItemResult[Any]:
        if i in failed:
            return ItemResult(i, i, ok=False, error=KeyError(i), started=1000.0 + i)
        return _ok(i, (i, "t") if i % 3 == 0 else {"i": i})

    bounds = [0, *sorted(cuts), len(order)]
    with open_checkpoint(path, job, batch_size=7, retry_failed=False) as store:
        recorded: set[int] = set()
        for lo, hi in itertools.pairwise(bounds):
            store.record([result(i) for i in order[lo:hi]])
            recorded.update(order[lo:hi])
            for i in probes:  # restores interleaved with records see buffered rows too
                r = store.restore(i, i)
                assert (r is not None) == (i in recorded)
    with open_checkpoint(path, job, retry_failed=False) as store:
        for i in range(30):
            r = store.restore(i, i)
            assert r is not None and r.index == i and r.started == 1000.0 + i
            if i in failed:
                assert not r.ok and type(r.error) is KeyError
            else:
                assert r.ok and r.value == result(i).value


def test_recording_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, job, batch_size=16) as store:

        def worker(k: int) -> None:
            for i in range(k, 2000, 8):  # each thread its own interleaved indexes
                store.record([_ok(i)])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with open_checkpoint(path, job) as store:
        assert store.stats()["total"] == 2000
        assert all(store.restore(i, i) is not None for i in range(2000))
