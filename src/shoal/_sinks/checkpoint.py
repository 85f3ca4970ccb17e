"""A durable checkpoint: an SQLite file from which an interrupted batch resumes.

One row per settled item, keyed by its index, holds:

* the item's fingerprint: blake2b (16 bytes, hex) of ``json.dumps(item,
  sort_keys=True)`` when JSON can hold the item, else of ``pickle.dumps(item,
  protocol=5)`` -- for non-JSON items it is only as stable as their pickle;
* a value as JSON text (tag ``'json'``) when ``json.dumps`` round-trips it with
  the same types, else as a cloudpickle blob (tag ``'pickle'``). Pickled values
  load only where the same classes are importable, and loading a pickle can run
  code: open only checkpoints you made. A value that cannot be stored is
  skipped with a warning, and its item runs again on resume;
* a failure's exception type name, message, formatted traceback and, when it
  survives a pickle round trip, a pickled copy. Restoring rebuilds it from the
  copy, else as ``RuntimeError("Type: message")``, with the traceback text
  attached as a ``RemoteTraceback`` cause;
* attempts, duration, worker and when it was recorded.

A ``meta`` table holds the job: ``module:qualname`` of the function and a hash
of its bytecode, constants and names (nested code included), so a checkpoint
belongs to one function on one Python minor version.

WAL journal, ``synchronous=NORMAL``, batched commits: after a crash or SIGKILL
the file is consistent and holds every committed batch; the rows of the batch
not yet committed are simply recomputed on resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sqlite3
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any, TypedDict

import cloudpickle

from shoal._core.errors import CheckpointMismatch, InvalidOptionError, NotPicklable, RemoteTraceback
from shoal._core.results import ItemResult

__all__ = ["CheckpointStore", "CheckpointSummary", "StoredFailure", "open_checkpoint",
           "stored_failures", "summarize"]

_FORMAT = "shoal-checkpoint"
_SCHEMA_VERSION = "1"
_FIX = "delete the file or pass another checkpoint path"
# Indirection so tests can drive the commit timer without sleeping.
_monotonic = time.monotonic

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    idx INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, ok INTEGER NOT NULL,
    value_kind TEXT, value BLOB,  -- kind 'json' | 'pickle', NULL for a failure
    error_type TEXT, error_message TEXT, error_traceback TEXT, error_pickle BLOB,
    attempts INTEGER NOT NULL, duration REAL NOT NULL, worker TEXT NOT NULL,
    recorded_at REAL NOT NULL);
"""
_Row = tuple[Any, ...]


class CheckpointSummary(TypedDict):
    """What ``summarize()`` and ``CheckpointStore.stats()`` report."""

    path: str
    job: str
    python: str
    created: float  # seconds since the epoch
    last_update: float | None  # when the newest row was recorded; None if empty
    total: int
    ok: int
    failed: int
    errors_by_type: dict[str, int]  # most common first


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _item_fingerprint(item: Any) -> str:
    """Hash of the item's canonical form (tagged so JSON and pickle never collide)."""
    try:
        data = b"j" + json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        try:
            data = b"p" + pickle.dumps(item, protocol=5)
        except Exception as exc:
            msg = f"a checkpoint cannot fingerprint a {type(item).__name__} item: {exc}"
            raise NotPicklable(msg) from exc
    return _digest(data)


def _const_key(const: Any) -> str:
    # Canonical text of a code constant. frozenset order follows string
    # hashing, which is randomized per process, so its members are sorted.
    if isinstance(const, CodeType):
        return "code:" + _code_digest(const)
    if isinstance(const, tuple):
        return "(" + ",".join(_const_key(c) for c in const) + ")"
    if isinstance(const, frozenset):
        return "{" + ",".join(sorted(_const_key(c) for c in const)) + "}"
    return f"{type(const).__name__}:{const!r}"


def _code_digest(code: CodeType) -> str:
    # co_names is included beyond co_code/co_consts: `math.floor(x)` and
    # `math.ceil(x)` differ only there.
    parts = [code.co_code, repr(code.co_names).encode()]
    parts += [_const_key(c).encode() for c in code.co_consts]
    return _digest(b"\0".join(parts))


def _job_fingerprint(fn: Callable[..., Any]) -> tuple[str, str]:
    """Return ``(module:qualname, code hash)`` identifying the job's function."""
    if isinstance(fn, functools.partial):
        name, code_hash = _job_fingerprint(fn.func)
        try:  # bound arguments change results, so they are part of the job
            bound = _item_fingerprint((fn.args, sorted(fn.keywords.items())))
        except Exception:
            bound = "unhashable"
        return f"functools.partial({name})", _digest(f"{code_hash}:{bound}".encode())
    # Functions and classes carry a __qualname__; a callable instance does not,
    # so it is named by its type and hashed by its type's __call__.
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(owner, '__module__', None)}:{owner.__qualname__}"
    init = getattr(fn, "__init__", None) if isinstance(fn, type) else None
    for candidate in (fn, init, type(fn).__call__):
        code = getattr(candidate, "__code__", None)
        if isinstance(code, CodeType):
            return name, _code_digest(code)
    return name, _digest(name.encode())  # builtins: the name is all there is


def _json_exact(a: Any, b: Any) -> bool:
    # Equality alone would accept (1, 2) -> [1, 2] or an IntEnum -> int.
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_exact(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_exact(a[k], b[k]) for k in a)
    return bool(a == b)


def _encode_value(value: Any) -> tuple[str, str | bytes]:
    """Return ``('json', text)`` or ``('pickle', blob)``; raises if unpicklable."""
    try:
        text = json.dumps(value)
        if _json_exact(value, json.loads(text)):
            return "json", text
    except (TypeError, ValueError, RecursionError):
        pass
    return "pickle", cloudpickle.dumps(value, protocol=5)


def _encode_error(err: BaseException) -> tuple[str, str, str, bytes | None]:
    tb = "".join(traceback.format_exception(err))
    blob: bytes | None
    try:  # many exceptions pickle but fail to unpickle (custom __init__)
        blob = cloudpickle.dumps(err, protocol=5)
        pickle.loads(blob)
    except Exception:
        blob = None
    return type(err).__name__, str(err), tb, blob


def _decode_error(type_name: str, message: str, tb: str, blob: bytes | None) -> BaseException:
    err: BaseException | None = None
    if blob is not None:
        try:
            loaded = pickle.loads(blob)
            err = loaded if isinstance(loaded, BaseException) else None
        except Exception:  # the class moved or changed since the run
            err = None
    if err is None:
        err = RuntimeError(f"{type_name}: {message}")
    if tb:
        err.__cause__ = RemoteTraceback(tb)
    return err


def _connect(path: str | os.PathLike[str], *, readonly: bool) -> tuple[Path, sqlite3.Connection]:
    """Validate ``path`` and open it; the caller checks the contents."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise InvalidOptionError(f"checkpoint path {p} is a directory; pass a file such as "
                                 f"{p / 'run.db'}")
    parent = p.absolute().parent
    if readonly and not p.exists():
        raise InvalidOptionError(f"no checkpoint at {p}; pass the path of an existing checkpoint")
    if not readonly:
        if not parent.is_dir():
            raise InvalidOptionError(
                f"cannot create checkpoint {p}: {parent} is not an existing directory; "
                "create it or pass another checkpoint path"
            )
        # WAL needs the directory writable too (for the -wal and -shm files).
        if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise InvalidOptionError(f"checkpoint {p} is not writable; fix its "
                                     "permissions or pass another checkpoint path")
    try:
        if readonly:
            conn = sqlite3.connect(p.absolute().as_uri() + "?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise InvalidOptionError(f"cannot open checkpoint {p}: {exc}; pass another path") from exc
    return p, conn


def _read_meta(p: Path, conn: sqlite3.Connection) -> dict[str, str] | None:
    """The meta table of a shoal checkpoint, or None for an empty database.

    Raises:
        CheckpointMismatch: the file is not a shoal checkpoint.
    """
    def not_ours(why: str) -> CheckpointMismatch:
        return CheckpointMismatch(f"{p} is not a shoal checkpoint ({why}); {_FIX}")

    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if not {"meta", "results"} <= tables:
            raise not_ours("an SQLite database without shoal's meta table")
        meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise not_ours(f"not an SQLite database: {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise not_ours("its meta table was not written by shoal")
    if meta.get("schema") != _SCHEMA_VERSION:
        raise CheckpointMismatch(f"{p} was made by another shoal version (schema "
                                 f"{meta.get('schema')}, not {_SCHEMA_VERSION}); {_FIX}")
    return meta


def _summary(p: Path, meta: dict[str, str], conn: sqlite3.Connection) -> CheckpointSummary:
    total, ok, last = conn.execute(
        "SELECT count(*), coalesce(sum(ok), 0), max(recorded_at) FROM results"
    ).fetchone()
    by_type = conn.execute(
        "SELECT error_type, count(*) AS n FROM results WHERE ok = 0 "
        "GROUP BY error_type ORDER BY n DESC, error_type"
    ).fetchall()
    return CheckpointSummary(
        path=str(p), job=meta["job"], python=meta.get("python", "?"),
        created=float(meta["created"]), last_update=last, total=total, ok=ok,
        failed=total - ok, errors_by_type={str(t): n for t, n in by_type},
    )


def summarize(path: str | os.PathLike[str]) -> CheckpointSummary:
    """Summarize a checkpoint file without modifying it (for ``shoal report``).

    Raises:
        InvalidOptionError: ``path`` is a directory or does not exist.
        CheckpointMismatch: the file is not a shoal checkpoint.
    """
    p, conn = _connect(path, readonly=True)
    try:
        meta = _read_meta(p, conn)
        if meta is None:
            raise CheckpointMismatch(f"{p} is not a shoal checkpoint (an empty database)")
        return _summary(p, meta, conn)
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """A failed item as a checkpoint holds it (the item itself is not stored)."""

    index: int  # the item's position in the input
    error_type: str
    message: str
    attempts: int


def stored_failures(path: str | os.PathLike[str]) -> list[StoredFailure]:
    """The failed items of a checkpoint, in input order, without modifying it
    (for ``shoal report --failures``).

    Raises:
        InvalidOptionError: ``path`` is a directory or does not exist.
        CheckpointMismatch: the file is not a shoal checkpoint.
    """
    p, conn = _connect(path, readonly=True)
    try:
        if _read_meta(p, conn) is None:
            raise CheckpointMismatch(f"{p} is not a shoal checkpoint (an empty database)")
        rows = conn.execute("SELECT idx, error_type, error_message, attempts FROM results "
                            "WHERE ok = 0 ORDER BY idx")
        return [StoredFailure(int(i), str(t), str(m), int(a)) for i, t, m, a in rows]
    finally:
        conn.close()


def open_checkpoint(
    path: str | os.PathLike[str], fn: Callable[..., Any], *, retry_failed: bool = True,
    batch_size: int = 256, commit_interval: float = 0.5,
) -> CheckpointStore:
    """Open (or create) the checkpoint of running ``fn`` at ``path``.

    Args:
        path: the SQLite file; created with its job fingerprint when missing.
        fn: the job's function; a checkpoint of another function is refused.
        retry_failed: run stored failures again (True) or restore them (False).
        batch_size: commit once this many results are buffered.
        commit_interval: or once this many seconds passed since the last commit
            (checked when results are recorded).

    Raises:
        InvalidOptionError: bad ``batch_size``/``commit_interval``, or ``path``
            is a directory or cannot be written.
        CheckpointMismatch: the file is not a shoal checkpoint, or was made by
            another function.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(commit_interval, (int, float)) or not commit_interval >= 0:
        raise InvalidOptionError(f"commit_interval must be >= 0 seconds, got {commit_interval!r}")
    name, code_hash = _job_fingerprint(fn)
    p, conn = _connect(path, readonly=False)
    try:
        meta = _read_meta(p, conn)
        if meta is None:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once, at creation
            meta = {"format": _FORMAT, "schema": _SCHEMA_VERSION, "job": name,
                    "job_code": code_hash, "created": repr(time.time()),
                    "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
            conn.executescript("BEGIN;" + _SCHEMA)  # one transaction: all or nothing
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
        elif (meta.get("job"), meta.get("job_code")) != (name, code_hash):
            same_name = meta.get("job") == name
            raise CheckpointMismatch(
                f"checkpoint {p} was made by {meta.get('job')} (Python {meta.get('python')})"
                f", not by {name}" + (" as it is now (its code changed)" if same_name else "")
                + f"; {_FIX}"
            )
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; WAL keeps it safe
    except BaseException:
        conn.close()
        raise
    return CheckpointStore(p, conn, meta, retry_failed, batch_size, float(commit_interval))


class CheckpointStore:
    """A ``ResultStore`` backed by an SQLite checkpoint; see ``open_checkpoint``."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, meta: dict[str, str],
        retry_failed: bool, batch_size: int, commit_interval: float,
    ) -> None:
        self.path = path
        self.job: str = meta["job"]
        self.retry_failed = retry_failed
        self._meta = meta
        self._batch_size = batch_size
        self._commit_interval = commit_interval
        # The lock guards everything below: the connection (one transaction at
        # a time; restore() runs on worker threads, record() on the consumer),
        # the buffer of uncommitted rows and the index map.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = conn
        self._pending: dict[int, _Row] = {}  # index -> row, until the next commit
        self._index: dict[int, tuple[str, bool]] | None = None  # idx -> (fp, ok), lazy
        self._last_commit = _monotonic()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"checkpoint {self.path} is closed")
        return self._conn

    def restore(self, index: int, item: Any) -> ItemResult[Any] | None:
        """Return the stored result of ``item`` at ``index``, or None to run it.

        A stored failure is returned only when ``retry_failed`` is False.

        Raises:
            CheckpointMismatch: the item stored at ``index`` is another item.
            NotPicklable: ``item`` can be neither JSON-encoded nor pickled.
            ValueError: the store is closed.
        """
        with self._lock:
            db = self._db()
            if self._index is None:  # one bulk read instead of a SELECT per item
                rows = db.execute("SELECT idx, fingerprint, ok FROM results")
                self._index = {i: (fp, bool(ok)) for i, fp, ok in rows}
            entry = self._index.get(index)
        if entry is None:
            return None
        if _item_fingerprint(item) != entry[0]:
            raise CheckpointMismatch(
                f"checkpoint {self.path}: the item at index {index} differs from the one "
                f"the run that made the checkpoint had; the items changed, so {_FIX}"
            )
        if not entry[1] and self.retry_failed:
            return None
        with self._lock:
            row = self._pending.get(index) or self._db().execute(
                "SELECT * FROM results WHERE idx = ?", (index,)
            ).fetchone()
        if row is None:
            return None
        _, _, ok, kind, value, etype, emsg, etb, eblob, attempts, duration, worker, _ = row
        result: ItemResult[Any] = ItemResult(
            index, item, ok=bool(ok), attempts=attempts, duration=duration,
            worker=worker, restored=True,
        )
        if ok:
            try:
                result.value = json.loads(value) if kind == "json" else pickle.loads(value)
            except Exception as exc:  # e.g. its class was renamed since the run
                msg = f"checkpoint: cannot load the value of item {index} ({exc!r}); rerunning it"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                return None
        else:
            result.error = _decode_error(etype, emsg, etb, eblob)
        return result

    def record(self, results: Sequence[ItemResult[Any]]) -> None:
        """Buffer ``results`` (restored ones are skipped) and commit when due.

        Raises:
            ValueError: the store is closed.
            sqlite3.Error: the commit failed (e.g. the disk is full).
        """
        now = time.time()
        rows: list[_Row] = []
        for r in results:
            if r.restored:
                continue
            try:
                fp = _item_fingerprint(r.item)
                kind, value = _encode_value(r.value) if r.ok else (None, None)
            except Exception as exc:
                # Losing durability of one item beats aborting the whole run.
                msg = f"checkpoint: cannot store item {r.index} ({exc}); it will rerun on resume"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                continue
            err = r.error if r.error is not None else RuntimeError("unknown error")
            outcome = (1, kind, value, None, None, None, None) if r.ok else (
                0, None, None, *_encode_error(err))
            rows.append((r.index, fp, *outcome, r.attempts, r.duration, r.worker, now))
        with self._lock:
            self._db()
            for row in rows:
                self._pending[row[0]] = row
                if self._index is not None:
                    self._index[row[0]] = (row[1], bool(row[2]))
            due = _monotonic() - self._last_commit >= self._commit_interval
            if len(self._pending) >= self._batch_size or due:
                self._commit_locked()

    def _commit_locked(self) -> None:
        db = self._db()
        if self._pending:
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    list(self._pending.values()),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # the rows stay buffered for the next try
                    db.execute("ROLLBACK")
                raise
            self._pending.clear()
        self._last_commit = _monotonic()

    def flush(self) -> None:
        """Commit every buffered result now.

        Raises:
            ValueError: the store is closed.
            sqlite3.Error: the commit failed.
        """
        with self._lock:
            self._commit_locked()

    def stats(self) -> CheckpointSummary:
        """Counts of this checkpoint, buffered results included (they are committed).

        Raises:
            ValueError: the store is closed.
        """
        with self._lock:
            self._commit_locked()
            return _summary(self.path, self._meta, self._db())

    def close(self) -> None:
        """Commit everything and close the file; closing twice is harmless.

        Raises:
            sqlite3.Error: the final commit failed (the file is closed anyway).
        """
        with self._lock:
            if self._conn is None:
                return
            try:
                self._commit_locked()
            finally:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
