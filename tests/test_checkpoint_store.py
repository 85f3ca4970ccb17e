"""Tests of the SQLite checkpoint store (shoal._sinks.checkpoint)."""

from __future__ import annotations

import functools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal._core.errors import (
    CheckpointMismatch,
    InvalidOptionError,
    RemoteError,
    RemoteTraceback,
)
from shoal._core.results import ItemResult
from shoal._sinks.base import ResultStore
from shoal._sinks.checkpoint import CheckpointStore, open_checkpoint, summarize
from shoal._sinks.checkpoint import store as _store
from shoal._sinks.checkpoint.format import item_fingerprint

# -- module-level helpers (module level so they pickle by reference) ----------


@dataclass(frozen=True)
class Point:
    x: int
    y: int


class CustomError(Exception):
    pass


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled (the classic custom-__init__ trap).

    ``__new__`` needs both arguments too, so the trap holds after tblib's
    pickling support is installed (importing ``distributed`` does that), which
    rebuilds exceptions with ``cls.__new__(cls)`` rather than ``cls(*args)``.
    """

    def __new__(cls, a: int, b: int) -> NeedsTwoArgs:
        return super().__new__(cls, a, b)

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


class Scaler:
    def __call__(self, x: int) -> int:
        return x * 3


def _double(x: int) -> int:
    return x * 2


def _triple(x: int) -> int:
    return x * 3


def _scaled(x: int, k: int) -> int:
    return x * k


# The job of the SIGKILL test: built from source so the subprocess (where it is
# __main__:job) and this process fingerprint the same function. The set literal
# compiles to a frozenset constant, whose order differs between processes.
JOB_SRC = '''
def job(x):
    if x in {"alpha", "beta", "gamma", "delta", "epsilon"}:
        return None
    return {"i": x, "sq": x * x}
'''


def _job_from(src: str) -> Any:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(src, "<job>", "exec"), ns)
    return ns["job"]


def _ok(i: int, value: Any, item: Any = None) -> ItemResult[Any]:
    return ItemResult(i, i if item is None else item, ok=True, value=value,
                      attempts=2, duration=0.25, worker="thread-1", started=1.5e9 + i)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # gives the exception a real traceback
        return caught


def _failed(i: int, exc: BaseException) -> ItemResult[Any]:
    return ItemResult(i, i, ok=False, error=_raised(exc), attempts=3, duration=0.5,
                      worker="pid:42")


def _committed(path: Path) -> int:
    """Rows a second, independent connection sees (i.e. committed rows)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        conn.close()


# -- round trips -----------------------------------------------------------------


JSON_VALUES = [{"a": [1, 2.5, None, True, "s"]}, "text", 3, None, [[]]]
PICKLE_VALUES = [{1, 2}, (1, 2), Point(1, 2), {1: "a"}, [1, (2, 3)]]


def test_round_trip_json_and_pickled_values(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    values = JSON_VALUES + PICKLE_VALUES + [float("nan")]
    with open_checkpoint(path, _double) as store:
        assert isinstance(store, ResultStore)
        store.record([_ok(i, v) for i, v in enumerate(values)])

    conn = sqlite3.connect(path)
    kinds = dict(conn.execute("SELECT idx, value_kind FROM results"))
    conn.close()
    assert [kinds[i] for i in range(len(values))] == (
        ["json"] * len(JSON_VALUES) + ["pickle"] * (len(PICKLE_VALUES) + 1)
    )

    with open_checkpoint(path, _double) as store:
        for i, v in enumerate(values[:-1]):
            r = store.restore(i, i)
            assert r is not None
            assert r.value == v and type(r.value) is type(v)
            assert (r.index, r.item, r.ok, r.restored) == (i, i, True, True)
            assert (r.attempts, r.duration, r.worker) == (2, 0.25, "thread-1")
            assert r.started == 1.5e9 + i
            assert r.error is None
        nan = store.restore(len(values) - 1, len(values) - 1)
        assert nan is not None and isinstance(nan.value, float) and math.isnan(nan.value)
        assert store.restore(len(values), len(values)) is None  # never recorded


def test_restore_sees_results_recorded_in_the_same_session(tmp_path: Path) -> None:
    with open_checkpoint(tmp_path / "run.db", _double, batch_size=100) as store:
        assert store.restore(0, "a") is None  # loads the (empty) index map
        store.record([_ok(0, {"v": 1}, item="a")])
        r = store.restore(0, "a")  # still buffered, not committed
        assert r is not None and r.value == {"v": 1}


def test_unpicklable_value_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        with pytest.warns(RuntimeWarning, match="item 0"):
            store.record([_ok(0, threading.Lock()), _ok(1, "fine")])
    with open_checkpoint(path, _double) as store:
        assert store.restore(0, 0) is None
        r = store.restore(1, 1)
        assert r is not None and r.value == "fine"


def test_unloadable_stored_value_reruns_the_item(tmp_path: Path) -> None:
    # A row shoal wrote whose pickle no longer loads (its class was renamed
    # since): the tag verifies, unpickling fails, the item runs again.
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, Point(1, 2))])
        fingerprint = item_fingerprint(0)
        tag = store._signer.tag(0, fingerprint, b"not a pickle")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE results SET value = ?, value_tag = ? WHERE idx = 0",
                     (b"not a pickle", tag))
    conn.close()
    with open_checkpoint(path, _double) as store, pytest.warns(RuntimeWarning, match="item 0"):
        assert store.restore(0, 0) is None


# -- failures --------------------------------------------------------------------


def test_failures_are_retried_by_default(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_failed(0, CustomError("boom")), _ok(1, 2)])
    with open_checkpoint(path, _double) as store:
        assert store.retry_failed is True
        assert store.restore(0, 0) is None
        r = store.restore(1, 1)
        assert r is not None and r.ok and r.value == 2


def test_failures_are_restored_when_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_failed(0, CustomError("boom")), _failed(1, NeedsTwoArgs(1, 2)),
                      _failed(2, ValueError("bad value"))])
    with open_checkpoint(path, _double, retry_failed=False) as store:
        # Errors are stored as data, never pickled: a class outside builtins
        # comes back as RemoteError naming it, with the original traceback.
        r = store.restore(0, 0)
        assert r is not None and not r.ok and r.restored and r.value is None
        assert (r.attempts, r.duration, r.worker) == (3, 0.5, "pid:42")
        assert type(r.error) is RemoteError
        assert r.error.type_name == f"{__name__}.CustomError" and r.error.message == "boom"
        assert isinstance(r.error.__cause__, RemoteTraceback)
        assert "_raised" in r.error.__cause__.tb  # the original traceback's frames
        with pytest.raises(RemoteError, match="CustomError: boom"):
            r.unwrap()

        r = store.restore(1, 1)  # one that would not even unpickle: data all the same
        assert r is not None and not r.ok
        assert type(r.error) is RemoteError and str(r.error).endswith("NeedsTwoArgs: 1/2")
        assert "NeedsTwoArgs" in r.traceback

        r = store.restore(2, 2)  # a builtin exception type comes back as itself
        assert r is not None and type(r.error) is ValueError and str(r.error) == "bad value"
        assert "_raised" in r.traceback


# -- mismatches ------------------------------------------------------------------


def test_other_function_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    open_checkpoint(path, _double).close()
    with pytest.raises(CheckpointMismatch) as info:
        open_checkpoint(path, _triple)
    msg = str(info.value)
    assert "_double" in msg and "_triple" in msg and str(path) in msg
    assert "delete the file or pass another checkpoint path" in msg
    open_checkpoint(path, _double).close()  # the right function still opens it


def test_same_name_with_changed_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    open_checkpoint(path, _job_from("def job(x):\n    return x + 1\n")).close()
    open_checkpoint(path, _job_from("def job(x):\n    return x + 1\n")).close()
    with pytest.raises(CheckpointMismatch, match="code changed"):
        open_checkpoint(path, _job_from("def job(x):\n    return x + 2\n"))
    floor = _job_from("import math\ndef job(x):\n    return math.floor(x)\n")
    ceil = _job_from("import math\ndef job(x):\n    return math.ceil(x)\n")
    assert floor.__code__.co_code == ceil.__code__.co_code  # they differ in co_names only
    open_checkpoint(tmp_path / "names.db", floor).close()
    with pytest.raises(CheckpointMismatch):
        open_checkpoint(tmp_path / "names.db", ceil)


def test_callable_instances_and_partials_are_fingerprinted(tmp_path: Path) -> None:
    with open_checkpoint(tmp_path / "a.db", Scaler()) as store:
        assert store.job.endswith(":Scaler")
    open_checkpoint(tmp_path / "a.db", Scaler()).close()  # another instance, same job

    open_checkpoint(tmp_path / "b.db", functools.partial(_scaled, k=2)).close()
    open_checkpoint(tmp_path / "b.db", functools.partial(_scaled, k=2)).close()
    with pytest.raises(CheckpointMismatch):
        open_checkpoint(tmp_path / "b.db", functools.partial(_scaled, k=3))


def test_other_item_at_an_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, 1, item={"a": 1, "b": 2}), _ok(7, 2, item=Point(0, 0))])
    with open_checkpoint(path, _double) as store:
        r = store.restore(0, {"b": 2, "a": 1})  # key order does not matter
        assert r is not None and r.value == 1
        assert store.restore(7, Point(0, 0)) is not None
        with pytest.raises(CheckpointMismatch, match="index 7") as info:
            store.restore(7, Point(0, 1))
        assert "differs from the one the run that made the checkpoint had" in str(info.value)


# -- recording -----------------------------------------------------------------


def test_recording_an_index_twice_keeps_one_row(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double, batch_size=1) as store:
        store.record([_failed(0, CustomError("first try"))])
        store.record([_ok(0, "second try")])  # a re-run after a crash
        store.record([_ok(1, "a"), _ok(1, "b")])  # twice inside one batch
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT idx, count(*) FROM results GROUP BY idx").fetchall() == [
        (0, 1), (1, 1)]
    conn.close()
    with open_checkpoint(path, _double) as store:
        r0, r1 = store.restore(0, 0), store.restore(1, 1)
        assert r0 is not None and r0.ok and r0.value == "second try"
        assert r1 is not None and r1.value == "b"


def test_restored_results_are_not_recorded(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        r = _ok(0, 1)
        r.restored = True
        store.record([r])
    assert _committed(path) == 0


def test_commits_when_the_buffer_is_full(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    store = open_checkpoint(path, _double, batch_size=3, commit_interval=3600)
    store.record([_ok(0, 0)])
    store.record([_ok(1, 1)])
    assert _committed(path) == 0
    store.record([_ok(2, 2)])
    assert _committed(path) == 3
    store.record([_ok(3, 3)])
    assert _committed(path) == 3
    store.close()
    assert _committed(path) == 4


def test_commits_when_the_interval_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_store, "_monotonic", lambda: clock[0])
    path = tmp_path / "run.db"
    store = open_checkpoint(path, _double, batch_size=1000, commit_interval=0.5)
    store.record([_ok(0, 0)])
    clock[0] += 0.4
    store.record([_ok(1, 1)])
    assert _committed(path) == 0
    clock[0] += 0.2
    store.record([_ok(2, 2)])
    assert _committed(path) == 3
    store.close()


def test_default_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_store, "_monotonic", lambda: clock[0])
    path = tmp_path / "run.db"
    store = open_checkpoint(path, _double)
    store.record([_ok(i, i) for i in range(255)])
    assert _committed(path) == 0
    store.record([_ok(255, 255)])
    assert _committed(path) == 256
    store.record([_ok(256, 256)])
    clock[0] += 0.49
    store.record([])
    assert _committed(path) == 256
    clock[0] += 0.01
    store.record([])
    assert _committed(path) == 257
    store.close()


def test_database_settings(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        conn = store._db()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_concurrent_restores_while_recording(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(i, {"v": i}) for i in range(500)])
    with open_checkpoint(path, _double, batch_size=7) as store:

        def check(i: int) -> bool:
            r = store.restore(i, i)
            return r is not None and r.value == {"v": i}

        with ThreadPoolExecutor(8) as pool:
            done = pool.map(check, range(500))
            for i in range(500, 1000):
                store.record([_ok(i, {"v": i})])
            assert all(done)
        assert store.stats()["total"] == 1000


# -- crash safety ----------------------------------------------------------------


def test_sigkill_keeps_every_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    script = JOB_SRC + (
        "import sys\n"
        "from shoal._sinks.checkpoint import open_checkpoint\n"
        "from shoal._core.results import ItemResult\n"
        "store = open_checkpoint(sys.argv[1], job, batch_size=5, commit_interval=3600)\n"
        "for i in range(10_000_000):\n"
        "    v = {'i': i, 'sq': i * i, 'pad': 'x' * 200}\n"
        "    store.record([ItemResult(i, i, ok=True, value=v, worker='w')])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)],
                            stderr=subprocess.PIPE)
    try:
        rows, deadline = 0, time.monotonic() + 30
        while rows < 200:  # bounded polling until the child committed enough
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "child committed too few rows"
            try:
                rows = _committed(path)
            except sqlite3.Error:  # file or table not created yet
                pass
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-loop, at an arbitrary point
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with open_checkpoint(path, _job_from(JOB_SRC)) as store:  # same job, other process
        n = store.stats()["total"]
        assert n >= 200 and n % 5 == 0  # only whole batches were committed
        for i in range(n):  # committed rows are the prefix 0..n-1, each complete
            r = store.restore(i, i)
            assert r is not None and r.restored and r.worker == "w"
            assert r.value == {"i": i, "sq": i * i, "pad": "x" * 200}
        for i in range(n, n + 50):
            assert store.restore(i, i) is None


# -- summaries -----------------------------------------------------------------


def test_summarize_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    t0 = time.time()
    with open_checkpoint(path, _double, batch_size=1000) as store:
        store.record([_ok(0, 0), _ok(1, 1), _ok(2, 2)])
        store.record([_failed(3, ValueError("a")), _failed(4, ValueError("b")),
                      _failed(5, KeyError("c"))])
        stats = store.stats()  # includes what was still buffered
    t1 = time.time()
    summary = summarize(path)
    assert summary == stats
    assert (summary["total"], summary["ok"], summary["failed"]) == (6, 3, 3)
    assert list(summary["errors_by_type"].items()) == [("ValueError", 2), ("KeyError", 1)]
    assert stats["errors_by_type"] == summary["errors_by_type"]
    assert summary["job"].endswith(":_double")
    assert summary["path"] == str(path)
    assert summary["last_update"] is not None
    assert t0 <= summary["created"] <= summary["last_update"] <= t1


def test_summarize_of_an_empty_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    open_checkpoint(path, _double).close()
    summary = summarize(path)
    assert (summary["total"], summary["ok"], summary["failed"]) == (0, 0, 0)
    assert summary["last_update"] is None and summary["errors_by_type"] == {}


def test_summarize_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="no checkpoint at"):
        summarize(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    with pytest.raises(CheckpointMismatch, match="not a shoal checkpoint"):
        summarize(tmp_path / "junk.db")


# -- bad input -----------------------------------------------------------------


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="is a directory") as info:
        open_checkpoint(tmp_path, _double)
    assert str(tmp_path) in str(info.value) and "run.db" in str(info.value)


def test_missing_or_non_directory_parent(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="create it or pass another"):
        open_checkpoint(tmp_path / "nope" / "run.db", _double)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidOptionError, match="not an existing directory"):
        open_checkpoint(tmp_path / "file" / "run.db", _double)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InvalidOptionError, match="not writable"):
            open_checkpoint(locked / "run.db", _double)
    finally:
        locked.chmod(0o700)


def test_unwritable_location_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root (as in CI containers) can write anywhere, so the permission probe is faked.
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    with pytest.raises(InvalidOptionError, match="is not writable") as info:
        open_checkpoint(tmp_path / "run.db", _double)
    assert str(tmp_path / "run.db") in str(info.value)
    assert not (tmp_path / "run.db").exists()


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    open_checkpoint(path, _double).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(CheckpointMismatch, match="another shoal version"):
        open_checkpoint(path, _double)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CheckpointMismatch, match="not a shoal checkpoint"):
        open_checkpoint(path, _double)


def test_foreign_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointMismatch, match="without shoal's meta table"):
        open_checkpoint(path, _double)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched
    conn.close()


def test_empty_file_becomes_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    path.write_bytes(b"")  # e.g. made by mktemp
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, 1)])
    assert summarize(path)["total"] == 1


@pytest.mark.parametrize(
    "options", [{"batch_size": 0}, {"batch_size": 1.5}, {"commit_interval": -1.0}]
)
def test_bad_options(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        open_checkpoint(tmp_path / "run.db", _double, **options)
    assert not (tmp_path / "run.db").exists()


def test_closed_store(tmp_path: Path) -> None:
    store: CheckpointStore = open_checkpoint(tmp_path / "run.db", _double)
    store.close()
    store.close()  # harmless
    with pytest.raises(ValueError, match="closed"):
        store.restore(0, 0)
    with pytest.raises(ValueError, match="closed"):
        store.record([_ok(0, 0)])


def test_wal_files_of_a_deleted_checkpoint_are_not_taken_for_the_new_ones(
        tmp_path: Path) -> None:
    # A killed run leaves run.db-wal and run.db-shm; the user deletes run.db,
    # as the messages say. SQLite could take the old WAL for the new file's
    # (seen as "disk I/O error" in the kill tests): the new checkpoint starts clean.
    path = tmp_path / "run.db"
    script = JOB_SRC + (
        "import os, sys\n"
        "from shoal._sinks.checkpoint import open_checkpoint\n"
        "from shoal._core.results import ItemResult\n"
        "store = open_checkpoint(sys.argv[1], job, batch_size=1)\n"
        "store.record([ItemResult(i, i, ok=True, value=i) for i in range(50)])\n"
        "os._exit(0)  # no close: the rows stay in the WAL\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert Path(f"{path}-wal").stat().st_size > 0
    path.unlink()
    with open_checkpoint(path, _triple) as store:  # another job: nothing of the old one
        assert store.stats()["total"] == 0
        store.record([_ok(0, 1)])
    assert summarize(path)["total"] == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
