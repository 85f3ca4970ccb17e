"""Opening a checkpoint file: path checks, orphaned WAL files, the connection."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from shoal._core.errors import InvalidOptionError

__all__ = ["checked_path", "connect", "forget_orphaned_journals"]


def checked_path(path: str | os.PathLike[str], *, readonly: bool) -> Path:
    """``path`` as a Path, once it is known to be usable as a checkpoint file.

    Raises:
        InvalidOptionError: ``path`` is a directory, missing (``readonly``) or unwritable.
    """
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
    return p


def forget_orphaned_journals(p: Path) -> None:
    """Remove the WAL files of a checkpoint whose database file was deleted.

    Deleting ``run.db`` after a kill (or after ``shoal report`` read it)
    leaves ``run.db-wal`` and ``run.db-shm``; SQLite would take them for the
    new file's and fail with "disk I/O error". Call it holding the lock.
    """
    if not p.exists():
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)


def connect(p: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open the checkpoint file ``p``; the caller checks the contents.

    Raises:
        InvalidOptionError: SQLite cannot open it.
    """
    try:
        if readonly:
            conn = sqlite3.connect(p.absolute().as_uri() + "?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
        # Defence in depth: SQL functions with side effects never run from the schema.
        conn.execute("PRAGMA trusted_schema=OFF")
    except sqlite3.Error as exc:
        raise InvalidOptionError(f"cannot open checkpoint {p}: {exc}; pass another path") from exc
    return conn
