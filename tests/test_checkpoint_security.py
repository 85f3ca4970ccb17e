"""A checkpoint never runs code it did not write (issue 12).

Values JSON cannot hold are pickled and tagged with HMAC-SHA256 under a key
kept outside the file; a row whose tag does not verify is refused, never
loaded, unless the checkpoint is opened with ``trust_pickles=True``. Errors
are stored as data and never unpickled.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal._core.errors import (
    CheckpointMismatch,
    CheckpointUntrusted,
    InvalidOptionError,
    RemoteError,
)
from shoal._core.results import ItemResult
from shoal._sinks.checkpoint import keys, open_checkpoint
from shoal._sinks.checkpoint.format import item_fingerprint

KEY_A = "a" * 32
KEY_B = "b" * 32


def _double(x: int) -> int:
    return x * 2


class Evil:
    """Unpickling this creates ``marker``: it stands for any code an attacker picks."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class EvilError(Exception):
    """An exception that would create ``marker`` if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        super().__init__("evil")
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _ok(i: int, value: Any) -> ItemResult[Any]:
    return ItemResult(i, i, ok=True, value=value, worker="w")


def _rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _plant(path: Path, index: int, blob: bytes, tag: bytes | None) -> None:
    """Write a pickled row as an attacker with write access to the file would."""
    _rows(path, "INSERT OR REPLACE INTO results (idx, fingerprint, ok, value_kind, value, "
          "value_tag, attempts, duration, worker, started, recorded_at) "
          "VALUES (?, ?, 1, 'pickle', ?, ?, 1, 0.0, 'w', 0.0, 0.0)",
          index, item_fingerprint(index), blob, tag)


@pytest.fixture
def user_key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $SHOAL_CHECKPOINT_KEY: the key file lives under a private data dir."""
    monkeypatch.delenv(keys.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr("sys.platform", "linux")  # key_file() follows XDG_DATA_HOME there
    return tmp_path / "data" / "shoal"


# -- the proof: a planted pickle is refused without running -----------------------


@pytest.mark.parametrize("tag", [None, b"\0" * 32], ids=["no-tag", "forged-tag"])
def test_planted_pickle_is_refused_without_running(tmp_path: Path, tag: bytes | None) -> None:
    path, marker = tmp_path / "run.db", tmp_path / "pwned"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(i, i * 2) for i in range(5)])
    _plant(path, 3, pickle.dumps(Evil(marker)), tag)

    with open_checkpoint(path, _double) as store:
        assert store.restore(2, 2) is not None  # the honest rows still load
        with pytest.raises(CheckpointUntrusted) as info:
            store.restore(3, 3)
    assert not marker.exists()
    err = info.value
    assert isinstance(err, CheckpointMismatch)  # "this checkpoint is not usable as is"
    assert (err.path, err.index) == (path, 3)
    msg = str(err)
    assert str(path) in msg and "row 3" in msg
    assert "trust_pickles=True" in msg and "--trust-pickles" in msg

    # Through the engine: the run stops with the same error, and nothing ran.
    with pytest.raises(CheckpointUntrusted, match="row 3"):
        shoal.run(_double, range(5), checkpoint=path, backend="sequential")
    assert not marker.exists()


RESUME = """
import sys
import shoal

def job(x):
    return (x, "pickled")

async def ajob(x):
    return (x, "pickled")

path, backend, address = sys.argv[1], sys.argv[2], sys.argv[3] or None
options = {"address": address} if address else {}
try:
    shoal.run(ajob if backend == "asyncio" else job, range(20), checkpoint=path,
              backend=backend, **options)
    print("ran")
except shoal.CheckpointUntrusted as exc:
    print("refused", exc.index)
"""
@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "processes", "dask"])
def test_every_backend_stops_at_a_refused_row(tmp_path: Path, backend: str,
                                              request: pytest.FixtureRequest) -> None:
    address = ""
    if backend == "dask":
        address = request.getfixturevalue("dask_cluster").scheduler_address
    path, marker = tmp_path / "run.db", tmp_path / "pwned"

    def resume() -> str:
        done = subprocess.run([sys.executable, "-c", RESUME, str(path), backend, address],
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert resume() == "ran"
    _plant(path, 7, pickle.dumps(Evil(marker)), None)
    try:
        assert resume() == "refused 7"
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on the refused row")
    assert not marker.exists()


def test_trust_pickles_loads_the_row_and_so_runs_its_code(tmp_path: Path) -> None:
    # The documented opt-in for a file from elsewhere: its pickles load as they
    # are, which runs whatever they say. Here, that creates the marker.
    path, marker = tmp_path / "run.db", tmp_path / "pwned"
    open_checkpoint(path, _double).close()
    _plant(path, 0, pickle.dumps(Evil(marker)), None)
    with open_checkpoint(path, _double, trust_pickles=True) as store:
        assert store.trust_pickles
        r = store.restore(0, 0)
    assert r is not None and r.restored and r.value is not None
    r.value.close()  # what the pickle built: an open file
    assert marker.exists()


# -- what the tag binds -------------------------------------------------------------


def test_a_row_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double, key=KEY_A) as store:
        store.record([_ok(0, (1, 2))])
    with open_checkpoint(path, _double, key=KEY_B) as store:
        with pytest.raises(CheckpointUntrusted, match="the key= argument does not authenticate"):
            store.restore(0, 0)
    with open_checkpoint(path, _double, key=KEY_A.encode()) as store:  # its bytes work too
        r = store.restore(0, 0)
        assert r is not None and r.value == (1, 2)
    # Two random keys that are not UTF-8 (decoding would make both 32 U+FFFD):
    # each is used as it is.
    raw, other = bytes(range(128, 160)), bytes(range(160, 192))
    with open_checkpoint(tmp_path / "raw.db", _double, key=raw) as store:
        store.record([_ok(0, (3, 4))])
    with open_checkpoint(tmp_path / "raw.db", _double, key=other) as store:
        with pytest.raises(CheckpointUntrusted):
            store.restore(0, 0)
    with pytest.raises(InvalidOptionError, match="has 5 bytes"):
        open_checkpoint(tmp_path / "short.db", _double, key=b"short")


def test_a_signed_row_moved_to_another_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, (0, "zero")), _ok(1, (1, "one"))])
    [(blob, tag)] = _rows(path, "SELECT value, value_tag FROM results WHERE idx = 0")
    _plant(path, 1, blob, tag)  # a genuine pickle and tag, on another row
    with open_checkpoint(path, _double) as store:
        assert store.restore(0, 0) is not None
        with pytest.raises(CheckpointUntrusted, match="row 1"):
            store.restore(1, 1)


def test_a_signed_row_from_another_checkpoint_is_refused(tmp_path: Path) -> None:
    # Same job, same key, same index: only the checkpoint differs (its id).
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for path, value in ((a, (1, "from a")), (b, (1, "from b"))):
        with open_checkpoint(path, _double) as store:
            store.record([_ok(0, value)])
    [(blob, tag)] = _rows(a, "SELECT value, value_tag FROM results WHERE idx = 0")
    _plant(b, 0, blob, tag)
    with open_checkpoint(b, _double) as store, pytest.raises(CheckpointUntrusted):
        store.restore(0, 0)


def test_json_values_stay_json_and_unsigned(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, {"a": [1, None]}), _ok(1, {1, 2})])
    rows = _rows(path, "SELECT idx, value_kind, typeof(value), length(value_tag) "
                 "FROM results ORDER BY idx")
    assert rows == [(0, "json", "text", None), (1, "pickle", "blob", 32)]


# -- errors are data ----------------------------------------------------------------


def test_errors_are_stored_as_data_and_never_unpickled(tmp_path: Path) -> None:
    path, marker = tmp_path / "run.db", tmp_path / "pwned"
    try:
        raise EvilError(str(marker))
    except EvilError as caught:
        error = caught
    with open_checkpoint(path, _double) as store:
        store.record([ItemResult(0, 0, ok=False, error=error)])
    columns = [r[1] for r in _rows(path, "PRAGMA table_info(results)")]
    assert not any("pickle" in c for c in columns)
    [(etype, emsg)] = _rows(path, "SELECT error_type, error_message FROM results")
    assert (etype, emsg) == (f"{__name__}.EvilError", "evil")

    # A planted error row names a callable: it stays a name.
    _rows(path, "INSERT INTO results (idx, fingerprint, ok, error_type, error_message, "
          "error_traceback, attempts, duration, worker, started, recorded_at) "
          "VALUES (1, ?, 0, 'os.system', 'touch pwned', '', 1, 0, 'w', 0, 0)",
          item_fingerprint(1))
    with open_checkpoint(path, _double, retry_failed=False) as store:
        r0, r1 = store.restore(0, 0), store.restore(1, 1)
    assert r0 is not None and type(r0.error) is RemoteError
    assert r0.error.type_name.endswith("EvilError") and "EvilError" in r0.traceback
    assert r1 is not None and type(r1.error) is RemoteError
    assert r1.error.type_name == "os.system"
    assert not marker.exists() and not (Path.cwd() / "pwned").exists()


# -- where the key comes from -----------------------------------------------------------


def test_key_file_is_made_on_the_first_pickle_with_mode_0600(
        tmp_path: Path, user_key_dir: Path) -> None:
    path, key_path = tmp_path / "run.db", user_key_dir / "checkpoint.key"
    assert keys.key_file() == key_path
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, "json needs no key")])
        store.flush()
        assert not key_path.exists()
        store.record([_ok(1, ("a", "tuple"))])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(user_key_dir.stat().st_mode) == 0o700
    secret = key_path.read_text().strip()
    assert len(secret) == 64 and secret.encode() not in path.read_bytes()
    with open_checkpoint(path, _double) as store:  # the same user, later
        r = store.restore(1, 1)
        assert r is not None and r.value == ("a", "tuple")
    # The key file is the secret: $SHOAL_CHECKPOINT_KEY set to it opens the file elsewhere.
    key_path.unlink()
    with open_checkpoint(path, _double) as store:
        with pytest.raises(CheckpointUntrusted, match="your key file"):
            store.restore(1, 1)
    assert not key_path.exists()  # checking never creates a key
    with open_checkpoint(path, _double, key=secret) as store:
        assert store.restore(1, 1) is not None


def test_environment_variable_names_the_key(
        tmp_path: Path, user_key_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.db"
    monkeypatch.setenv(keys.ENV_VAR, KEY_A)
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, (0,))])
    assert not user_key_dir.exists()
    monkeypatch.delenv(keys.ENV_VAR)  # another machine without it: the key file is not it
    with open_checkpoint(path, _double) as store, pytest.raises(CheckpointUntrusted):
        store.restore(0, 0)
    monkeypatch.setenv(keys.ENV_VAR, KEY_A)
    with open_checkpoint(path, _double) as store:
        assert store.restore(0, 0) is not None
    with open_checkpoint(path, _double, key=KEY_B) as store:  # key= comes first
        with pytest.raises(CheckpointUntrusted):
            store.restore(0, 0)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path, user_key_dir: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        store.record([_ok(0, (0,))])
    key_path = user_key_dir / "checkpoint.key"
    key_path.chmod(0o644)
    with open_checkpoint(path, _double) as store:
        with pytest.raises(InvalidOptionError, match=f"chmod 600 {key_path}"):
            store.restore(0, 0)


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_short_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                source: str) -> None:
    if source == "argument":
        with pytest.raises(InvalidOptionError, match="at least 16"):
            open_checkpoint(tmp_path / "run.db", _double, key="short")
    else:
        monkeypatch.setenv(keys.ENV_VAR, "short")
        with pytest.raises(InvalidOptionError, match="SHOAL_CHECKPOINT_KEY has 5 characters"):
            open_checkpoint(tmp_path / "run.db", _double)
    assert not (tmp_path / "run.db").exists()  # refused before the file is made


def test_no_key_to_be_had_skips_pickled_values_once_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.ENV_VAR, raising=False)
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "file"))
    monkeypatch.setattr("sys.platform", "linux")
    path = tmp_path / "run.db"
    with open_checkpoint(path, _double) as store:
        with pytest.warns(RuntimeWarning, match="values JSON cannot hold are not stored") as seen:
            store.record([_ok(0, (0,)), _ok(1, 1), _ok(2, (2,))])
            store.record([_ok(3, (3,))])
        assert len(seen) == 1
    with open_checkpoint(path, _double) as store:
        assert [store.restore(i, i) is not None for i in range(4)] == [False, True, False, False]


def test_concurrent_first_uses_make_one_key(tmp_path: Path, user_key_dir: Path) -> None:
    key_path = user_key_dir / "checkpoint.key"

    def make(_: int) -> str:
        keys._create_key_file(key_path)
        return key_path.read_text()

    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(make, range(16)))
    assert len(made) == 1
    assert os.listdir(user_key_dir) == ["checkpoint.key"]  # no temporary file left


# -- other files shoal will not read ----------------------------------------------------


def test_a_checkpoint_of_schema_1_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    open_checkpoint(path, _double).close()
    _rows(path, "UPDATE meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(CheckpointMismatch, match="older shoal") as info:
        open_checkpoint(path, _double)
    assert "delete the file or pass another checkpoint path" in str(info.value)


def test_a_checkpoint_with_a_trigger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    open_checkpoint(path, _double).close()
    _rows(path, "CREATE TRIGGER t AFTER INSERT ON results BEGIN "
          "UPDATE results SET value_kind = 'pickle'; END")
    with pytest.raises(CheckpointMismatch, match="views or triggers"):
        open_checkpoint(path, _double)
