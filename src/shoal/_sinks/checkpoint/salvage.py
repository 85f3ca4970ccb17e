"""Keep what is readable of a damaged checkpoint.

``salvage_checkpoint`` copies every row SQLite can still read into a new
checkpoint file of the same job. The meta table is copied whole, the
checkpoint's id included, so pickled rows keep valid tags: rows are copied as
stored, nothing is unpickled. Resuming with the new file runs again only the
items whose rows were lost with the damaged pages.

Rows are read in index order. When a read fails, the smallest index after
which reading works again is searched for (doubling, then bisecting: a damaged
leaf page covers one range of indexes), and the rows in between are skipped.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from shoal._core.errors import CheckpointDamaged, CheckpointMismatch, InvalidOptionError
from shoal._sinks.checkpoint.files import checked_path, connect, forget_orphaned_journals
from shoal._sinks.checkpoint.format import (
    INSERT_ROW,
    StoredRow,
    create,
    read_meta,
    reading,
)
from shoal._sinks.checkpoint.lock import CheckpointLock

__all__ = ["salvage_checkpoint"]

_MAX_INDEX = 2**62
_SELECT_AFTER = "SELECT * FROM results WHERE idx > ? ORDER BY idx LIMIT ?"


def _rows_after(p: Path, conn: sqlite3.Connection, after: int, n: int) -> list[StoredRow] | None:
    """Up to ``n`` rows after index ``after``; None when their pages are damaged."""
    try:
        with reading(p):
            return [StoredRow(*row) for row in conn.execute(_SELECT_AFTER, (after, n))]
    except CheckpointDamaged:
        return None


def _skip_damage(p: Path, conn: sqlite3.Connection, after: int) -> int | None:
    """The smallest index past ``after`` from which rows read again, or None."""
    bad, step = after, 1
    while _rows_after(p, conn, after + step, 1) is None:
        bad = after + step
        step *= 2
        if after + step > _MAX_INDEX:
            return None
    good = after + step
    while good - bad > 1:
        mid = (bad + good) // 2
        if _rows_after(p, conn, mid, 1) is None:
            bad = mid
        else:
            good = mid
    return good


def _plausible(row: StoredRow) -> bool:
    # A damaged page can also read back as wrong values rather than an error.
    return (isinstance(row.idx, int) and row.idx >= 0 and isinstance(row.fingerprint, str)
            and len(row.fingerprint) == 32 and row.ok in (0, 1)
            and (row.ok == 0 or row.value_kind in ("json", "pickle")))


def _readable_rows(p: Path, conn: sqlite3.Connection) -> Iterator[StoredRow]:
    after: int | None = -1
    while after is not None:
        rows = _rows_after(p, conn, after, 512)
        if rows is None:  # some page among the next 512 rows: go one by one
            rows = _rows_after(p, conn, after, 1)
            if rows is None:
                after = _skip_damage(p, conn, after)
                continue
        if not rows:
            return
        yield from (row for row in rows if _plausible(row))
        after = rows[-1].idx


def salvage_checkpoint(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Copy the readable results of a damaged checkpoint into a new checkpoint ``dest``.

    Resume with ``dest``: only the items whose results were lost run again.
    ``path`` is only read.

    Returns:
        How many results were kept.

    Raises:
        InvalidOptionError: ``path`` is missing, or ``dest`` exists already.
        CheckpointMismatch: ``path`` is not a shoal checkpoint.
        CheckpointDamaged: not even the job's meta table can be read.
        CheckpointInUse: another run has ``dest`` open.
    """
    src_path = checked_path(path, readonly=True)
    src = connect(src_path, readonly=True)
    try:
        try:
            meta = read_meta(src_path, src)
        except CheckpointDamaged as exc:
            raise CheckpointDamaged(
                f"checkpoint {src_path} is damaged beyond salvage: the table naming its job "
                f"cannot be read ({exc.__cause__}); start afresh with another checkpoint path",
                src_path) from exc
        if meta is None:
            raise CheckpointMismatch(f"{src_path} is not a shoal checkpoint (an empty database)")
        out_path = checked_path(dest, readonly=False)
        if out_path.exists():
            raise InvalidOptionError(f"cannot salvage into {out_path}: it exists already; "
                                     "pass the path of a new file")
        lock = CheckpointLock(out_path)
        try:
            forget_orphaned_journals(out_path)
            out = connect(out_path, readonly=False)
        except BaseException:
            lock.release()
            raise
        done = False
        try:
            create(out, {**meta, "salvaged_from": f"{src_path} at {time.time()!r}"})
            kept, batch = 0, []
            for row in _readable_rows(src_path, src):
                batch.append(row)
                if len(batch) == 1024:
                    kept += _write(out, batch)
            kept += _write(out, batch)
            done = True
        finally:
            out.close()
            if not done:  # half a copy would look like a good one: leave nothing
                for leftover in ("", "-wal", "-shm"):
                    Path(f"{out_path}{leftover}").unlink(missing_ok=True)
            lock.release()
        return kept
    finally:
        src.close()


def _write(conn: sqlite3.Connection, rows: list[StoredRow]) -> int:
    n = len(rows)
    conn.execute("BEGIN")
    conn.executemany(INSERT_ROW, rows)
    conn.execute("COMMIT")
    rows.clear()
    return n

