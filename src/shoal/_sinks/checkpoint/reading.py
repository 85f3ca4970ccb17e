"""Reading a checkpoint without modifying it: ``summarize`` and ``stored_failures``
(for ``shoal report``), and the counts ``CheckpointStore.stats`` reports."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from shoal._core.errors import CheckpointMismatch
from shoal._sinks.checkpoint.files import checked_path, connect
from shoal._sinks.checkpoint.format import read_meta, reading

__all__ = ["CheckpointSummary", "StoredFailure", "stored_failures", "summarize"]


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


def _class_name(stored: object) -> str:
    # The file holds "module.QualName" for a class outside builtins; reports
    # name it as BatchReport.errors_by_type does, by the class's own name.
    return str(stored).rpartition(".")[2]


def summary_of(p: Path, meta: dict[str, str], conn: sqlite3.Connection) -> CheckpointSummary:
    with reading(p):
        total, ok, last = conn.execute(
            "SELECT count(*), coalesce(sum(ok), 0), max(recorded_at) FROM results"
        ).fetchone()
        rows = conn.execute(
            "SELECT error_type, count(*) FROM results WHERE ok = 0 GROUP BY error_type")
        by_type: Counter[str] = Counter()
        for name, n in rows:
            by_type[_class_name(name)] += n
    return CheckpointSummary(
        path=str(p), job=meta["job"], python=meta.get("python", "?"),
        created=float(meta["created"]), last_update=last, total=total, ok=ok,
        failed=total - ok,
        errors_by_type=dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def summarize(path: str | os.PathLike[str]) -> CheckpointSummary:
    """Summarize a checkpoint file without modifying it (for ``shoal report``).

    Raises:
        InvalidOptionError: ``path`` is a directory or does not exist.
        CheckpointMismatch: the file is not a shoal checkpoint.
        CheckpointDamaged: SQLite finds the file corrupt.
    """
    with _opened(path) as (p, conn, meta):
        return summary_of(p, meta, conn)


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """A failed item as a checkpoint holds it (the item itself is not stored)."""

    index: int  # the item's position in the input
    error_type: str  # the exception class's name, as BatchReport.errors_by_type has it
    message: str
    attempts: int


def stored_failures(path: str | os.PathLike[str]) -> list[StoredFailure]:
    """The failed items of a checkpoint, in input order, without modifying it
    (for ``shoal report --failures``).

    Raises:
        InvalidOptionError: ``path`` is a directory or does not exist.
        CheckpointMismatch: the file is not a shoal checkpoint.
        CheckpointDamaged: SQLite finds the file corrupt.
    """
    with _opened(path) as (p, conn, _), reading(p):
        rows = conn.execute("SELECT idx, error_type, error_message, attempts FROM results "
                            "WHERE ok = 0 ORDER BY idx").fetchall()
    return [StoredFailure(int(i), _class_name(t), str(m), int(a)) for i, t, m, a in rows]


@contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[tuple[Path, sqlite3.Connection,
                                                           dict[str, str]]]:
    """A checkpoint opened read-only, with its meta table; closed on exit.

    Raises:
        InvalidOptionError, CheckpointMismatch, CheckpointDamaged: as ``summarize``.
    """
    p = checked_path(path, readonly=True)
    conn = connect(p, readonly=True)
    try:
        meta = read_meta(p, conn)
        if meta is None:
            raise CheckpointMismatch(f"{p} is not a shoal checkpoint (an empty database)")
        yield p, conn, meta
    finally:
        conn.close()
