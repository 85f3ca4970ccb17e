"""A durable checkpoint: an SQLite file from which an interrupted batch resumes.

The file's layout is in ``format.py``, the authentication of its pickled rows
in ``keys.py``, the one-run-at-a-time lock in ``lock.py``, opening the file in
``files.py``, read-only summaries in ``reading.py``.

WAL journal, ``synchronous=NORMAL``, batched commits: after a crash or SIGKILL
the file is consistent and holds every committed batch; the rows not yet
committed are simply recomputed on resume. A batch is committed once it holds
``batch_size`` results, or ``commit_interval`` seconds after the last commit
*by the clock*: a timer thread of the store commits what is buffered even when
no further result comes (a slow item stalls delivery, or the caller holds the
``imap`` generator), so a kill never loses more than that interval of work.

``record`` takes results in any index order, from any thread; ``restore``
sees every recorded result, committed or still buffered.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from shoal._core import wire
from shoal._core.errors import CheckpointMismatch, CheckpointUntrusted, InvalidOptionError
from shoal._core.results import ItemResult
from shoal._sinks.checkpoint.files import checked_path, connect, forget_orphaned_journals
from shoal._sinks.checkpoint.format import (
    FIX,
    FORMAT,
    INSERT_ROW,
    SCHEMA_VERSION,
    StoredRow,
    create,
    encode_value,
    item_fingerprint,
    job_fingerprint,
    read_meta,
    reading,
)
from shoal._sinks.checkpoint.keys import RowSigner, given_key
from shoal._sinks.checkpoint.lock import CheckpointLock
from shoal._sinks.checkpoint.reading import CheckpointSummary, summary_of

__all__ = ["CheckpointStore", "open_checkpoint"]

# Indirection so tests can drive the commit timer without sleeping.
_monotonic = time.monotonic


def open_checkpoint(
    path: str | os.PathLike[str], fn: Callable[..., Any], *, retry_failed: bool = True,
    batch_size: int = 256, commit_interval: float = 0.5, key: str | bytes | None = None,
    trust_pickles: bool = False,
) -> CheckpointStore:
    """Open (or create) the checkpoint of running ``fn`` at ``path``.

    Args:
        path: the SQLite file; created with its job fingerprint when missing.
        fn: the job's function; a checkpoint of another function is refused.
        retry_failed: run stored failures again (True) or restore them (False).
        batch_size: commit once this many results are buffered.
        commit_interval: and at most this many seconds after the last commit,
            by the clock, whether or not more results come.
        key: the secret that authenticates pickled rows (at least 16
            characters); default ``$SHOAL_CHECKPOINT_KEY``, else the user's key
            file (created on first use).
        trust_pickles: load pickled rows whose tag does not verify (a file
            made elsewhere). Loading a pickle can run any code its author chose:
            only for files you trust.

    Raises:
        InvalidOptionError: a bad option, or ``path`` is a directory or cannot be written.
        CheckpointMismatch: the file is not a shoal checkpoint, or was made by
            another function or another shoal version.
        CheckpointInUse: another run has the checkpoint open.
        CheckpointDamaged: SQLite finds the file corrupt.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(commit_interval, (int, float)) or not commit_interval >= 0:
        raise InvalidOptionError(f"commit_interval must be >= 0 seconds, got {commit_interval!r}")
    if key is not None and not isinstance(key, (str, bytes)):
        raise InvalidOptionError(f"key must be a str or bytes, got {type(key).__name__}")
    secret, secret_source = given_key(key)
    name, code_hash = job_fingerprint(fn)
    p = checked_path(path, readonly=False)
    lock = CheckpointLock(p)  # before anything else: no other run may be creating it now
    conn: sqlite3.Connection | None = None
    try:
        forget_orphaned_journals(p)
        conn = connect(p, readonly=False)
        meta = read_meta(p, conn)
        if meta is None:
            meta = {"format": FORMAT, "schema": SCHEMA_VERSION, "id": secrets.token_hex(16),
                    "job": name, "job_code": code_hash, "created": repr(time.time()),
                    "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
            create(conn, meta)
        elif (meta.get("job"), meta.get("job_code")) != (name, code_hash):
            same_name = meta.get("job") == name
            raise CheckpointMismatch(
                f"checkpoint {p} was made by {meta.get('job')} (Python {meta.get('python')})"
                f", not by {name}" + (" as it is now (its code changed)" if same_name else "")
                + f"; {FIX}"
            )
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; WAL keeps it safe
        signer = RowSigner(meta["id"], secret, secret_source)
        with reading(p):  # one bulk read; it also finds damaged pages before any work
            index = {i: (fp, bool(ok)) for i, fp, ok in
                     conn.execute("SELECT idx, fingerprint, ok FROM results")}
    except BaseException:
        if conn is not None:
            conn.close()
        lock.release()
        raise
    return CheckpointStore(p, conn, meta, lock, signer, index, retry_failed=retry_failed,
                           batch_size=batch_size, commit_interval=float(commit_interval),
                           trust_pickles=trust_pickles)


class CheckpointStore:
    """A ``ResultStore`` backed by an SQLite checkpoint; see ``open_checkpoint``."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, meta: dict[str, str], lock: CheckpointLock,
        signer: RowSigner, index: dict[int, tuple[str, bool]], *, retry_failed: bool,
        batch_size: int, commit_interval: float, trust_pickles: bool,
    ) -> None:
        self.path = path
        self.job: str = meta["job"]
        self.retry_failed = retry_failed
        self.trust_pickles = trust_pickles
        self._meta = meta
        self._file_lock = lock
        self._signer = signer
        self._batch_size = batch_size
        self._commit_interval = commit_interval
        self._key_warned = False
        # The lock guards everything below: the connection (one transaction at
        # a time; restore() runs on worker threads, record() on the consumer,
        # commits also on the timer thread), the buffer of uncommitted rows,
        # the index map and the timer's state. _wake is signalled when the
        # buffer stops being empty and when the store closes.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._conn: sqlite3.Connection | None = conn
        self._pending: dict[int, StoredRow] = {}  # index -> row, until the next commit
        self._index = index  # idx -> (fingerprint, ok) of every recorded row
        self._last_commit = _monotonic()
        self._commits = 0  # batches written (tests wait on it)
        self._timer: threading.Thread | None = None  # started by the first buffered row
        self._closing = False
        self._timer_error: BaseException | None = None  # a failed timed commit, raised later

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._closing:
            raise ValueError(f"checkpoint {self.path} is closed")
        return self._conn

    # ---------------------------------------------------------------- restore
    def restore(self, index: int, item: Any) -> ItemResult[Any] | None:
        """Return the stored result of ``item`` at ``index``, or None to run it.

        A stored failure is returned only when ``retry_failed`` is False.

        Raises:
            CheckpointMismatch: the item stored at ``index`` is another item.
            CheckpointUntrusted: its value is a pickle that the checkpoint key
                does not authenticate (and ``trust_pickles`` is False).
            CheckpointDamaged: SQLite finds the row's pages corrupt.
            NotPicklable: ``item`` can be neither JSON-encoded nor pickled.
            ValueError: the store is closed.
        """
        with self._lock:
            self._db()
            entry = self._index.get(index)
        if entry is None:
            return None
        if item_fingerprint(item) != entry[0]:
            raise CheckpointMismatch(
                f"checkpoint {self.path}: the item at index {index} differs from the one "
                f"the run that made the checkpoint had; the items changed, so {FIX}"
            )
        if not entry[1] and self.retry_failed:
            return None
        with self._lock:
            row = self._pending.get(index)
            if row is None:
                with reading(self.path):
                    found = self._db().execute(
                        "SELECT * FROM results WHERE idx = ?", (index,)).fetchone()
                row = None if found is None else StoredRow(*found)
        return None if row is None else self._result(row, item)

    def _result(self, row: StoredRow, item: Any) -> ItemResult[Any] | None:
        result: ItemResult[Any] = ItemResult(
            row.idx, item, ok=bool(row.ok), attempts=row.attempts, duration=row.duration,
            worker=row.worker, restored=True, started=row.started,
        )
        if not row.ok:
            result.error = wire.restore_error(wire.ErrorData(
                row.error_type or "", row.error_message or "", row.error_traceback or ""))
            return result
        pickled = row.value_kind == "pickle" and isinstance(row.value, bytes)
        if pickled:
            self._check_tag(row)  # before anything reads the bytes; raises, never warns
        try:
            if pickled:
                result.value = wire.loads(row.value)  # type: ignore[arg-type]
            elif row.value_kind == "json":
                result.value = json.loads(row.value or "")
            else:
                raise ValueError(f"unknown value kind {row.value_kind!r}")
        except Exception as exc:  # e.g. its class was renamed since the run
            msg = f"checkpoint: cannot load the value of item {row.idx} ({exc!r}); rerunning it"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return None
        return result

    def _check_tag(self, row: StoredRow) -> None:
        assert isinstance(row.value, bytes)
        if self.trust_pickles or self._signer.verify(
                row.idx, row.fingerprint, row.value, row.value_tag):
            return
        raise CheckpointUntrusted(
            f"checkpoint {self.path}: row {row.idx} holds a pickled value that "
            f"{self._signer.source} does not authenticate, so shoal will not load it "
            "(unpickling can run any code). The file was made with another key (another "
            "user or machine), or changed since. If you trust it, open it with "
            "open_checkpoint(..., trust_pickles=True) (shoal run: --trust-pickles); if it "
            f"was made with a shared key, set SHOAL_CHECKPOINT_KEY to that key; else {FIX}",
            self.path, row.idx)

    # ----------------------------------------------------------------- record
    def _encode(self, r: ItemResult[Any], now: float) -> StoredRow:
        fp = item_fingerprint(r.item)
        if r.ok:
            kind, data = encode_value(r.value)
            tag = self._signer.tag(r.index, fp, data) if isinstance(data, bytes) else None
            return StoredRow(r.index, fp, 1, kind, data, tag, None, None, None,
                             r.attempts, r.duration, r.worker, r.started, now)
        err = wire.ErrorData.of(r.error if r.error is not None else RuntimeError("unknown error"))
        return StoredRow(r.index, fp, 0, None, None, None, err.type_name, err.message,
                         err.traceback, r.attempts, r.duration, r.worker, r.started, now)

    def record(self, results: Sequence[ItemResult[Any]]) -> None:
        """Buffer ``results`` (restored ones are skipped) and commit when due.

        Any index order, from any thread. A result that cannot be stored is
        skipped with a warning: its item runs again on resume.

        Raises:
            ValueError: the store is closed.
            CheckpointDamaged: SQLite finds the file corrupt.
            sqlite3.Error: the commit (or an earlier timed one) failed, e.g. the disk is full.
        """
        now = time.time()
        rows: list[StoredRow] = []
        for r in results:
            if r.restored:
                continue
            try:
                rows.append(self._encode(r, now))
            except InvalidOptionError as exc:  # no checkpoint key: say so once, not per item
                if not self._key_warned:
                    self._key_warned = True
                    warnings.warn(f"checkpoint {self.path}: values JSON cannot hold are not "
                                  f"stored ({exc}); their items will rerun on resume",
                                  RuntimeWarning, stacklevel=2)
            except Exception as exc:
                # Losing durability of one item beats aborting the whole run.
                msg = f"checkpoint: cannot store item {r.index} ({exc}); it will rerun on resume"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
        with self._lock:
            self._db()
            was_empty = not self._pending
            for row in rows:
                self._pending[row.idx] = row
                self._index[row.idx] = (row.fingerprint, bool(row.ok))
            # After a failed timed commit, try again now: the caller hears of
            # the failure only if it persists.
            if (len(self._pending) >= self._batch_size or self._commit_delay_locked() == 0
                    or self._timer_error is not None):
                self._commit_locked()
            elif was_empty and self._pending:
                if self._timer is None:
                    self._timer = threading.Thread(target=self._run_timer, daemon=True,
                                                   name=f"shoal-checkpoint-{self.path.name}")
                    self._timer.start()
                self._wake.notify_all()

    def _commit_delay_locked(self) -> float | None:
        """Seconds until the buffer is due (0: now); None when it is empty."""
        if not self._pending:
            return None
        return max(0.0, self._last_commit + self._commit_interval - _monotonic())

    def _commit_locked(self) -> None:
        db = self._conn  # callers checked that the store is open, or are closing it
        assert db is not None
        if self._pending:
            with reading(self.path):
                db.execute("BEGIN")
                try:
                    db.executemany(INSERT_ROW, list(self._pending.values()))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # the rows stay buffered for the next try
                        db.execute("ROLLBACK")
                    raise
            self._pending.clear()
            self._commits += 1
            self._wake.notify_all()
        self._last_commit = _monotonic()
        self._timer_error = None

    def _run_timer(self) -> None:
        # The timer thread: it commits the buffer once due, so the time bound
        # holds even when record() is not called again.
        with self._lock:
            while not self._closing:
                delay = self._commit_delay_locked()
                if delay is None or delay > 0:
                    self._wake.wait(delay)
                    continue
                try:
                    self._commit_locked()
                except Exception as exc:  # record() and close() retry, and raise if it fails again
                    self._timer_error = exc
                    self._last_commit = _monotonic()  # try again one interval later
                    self._wake.notify_all()

    def flush(self) -> None:
        """Commit every buffered result now.

        Raises:
            ValueError: the store is closed.
            sqlite3.Error: the commit failed.
        """
        with self._lock:
            self._db()
            self._commit_locked()

    def stats(self) -> CheckpointSummary:
        """Counts of this checkpoint, buffered results included (they are committed).

        Raises:
            ValueError: the store is closed.
        """
        with self._lock:
            self._db()
            self._commit_locked()
            return summary_of(self.path, self._meta, self._db())

    def close(self) -> None:
        """Commit everything, stop the timer and close the file; closing twice is harmless.

        Raises:
            sqlite3.Error: the final commit failed (the file is closed anyway).
        """
        with self._lock:
            if self._conn is None or self._closing:
                return
            self._closing = True  # record() and restore() refuse from now on
            self._wake.notify_all()
            timer = self._timer
        if timer is not None:
            timer.join()  # outside the lock, which the timer needs to see _closing
        with self._lock:
            conn = self._conn
            assert conn is not None
            try:
                self._commit_locked()
            finally:
                self._conn = None
                conn.close()
                self._file_lock.release()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

