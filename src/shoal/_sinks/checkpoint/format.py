"""The checkpoint file: its schema, its meta table, and how a result becomes a row.

Schema 2. A ``meta`` table holds the job: ``module:qualname`` of the function
and a hash of its bytecode, constants and names (nested code included), so a
checkpoint belongs to one function on one Python minor version; and ``id``, a
random name of this checkpoint that the tags of its pickled rows cover.

One ``results`` row per settled item, keyed by its index, holds:

* the item's fingerprint: blake2b (16 bytes, hex) of ``json.dumps(item,
  sort_keys=True)`` when JSON can hold the item, else of its pickle -- for
  non-JSON items it is only as stable as their pickle;
* a value as JSON text (kind ``'json'``) when ``json.dumps`` round-trips it
  with the same types, else as a pickle (kind ``'pickle'``, made by the wire
  format's ``dumps``) with ``value_tag``, its HMAC (``keys.RowSigner``);
* a failure as data: its type name, message and traceback text
  (``wire.ErrorData``). No exception is ever pickled into the file;
* attempts, duration, worker, when its last attempt started, and when it was
  recorded.

Nothing read from the file runs code: JSON and ``ErrorData`` are plain data,
and a pickle is loaded only when its tag verifies (or the caller trusts the file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any, NamedTuple

from shoal._core import wire
from shoal._core.errors import CheckpointDamaged, CheckpointMismatch, NotPicklable

FORMAT = "shoal-checkpoint"
SCHEMA_VERSION = "2"
FIX = "delete the file or pass another checkpoint path"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    idx INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, ok INTEGER NOT NULL,
    value_kind TEXT, value BLOB, value_tag BLOB,  -- kind 'json' | 'pickle'; NULL on failure
    error_type TEXT, error_message TEXT, error_traceback TEXT,  -- NULL on success
    attempts INTEGER NOT NULL, duration REAL NOT NULL, worker TEXT NOT NULL,
    started REAL NOT NULL, recorded_at REAL NOT NULL);
"""


class StoredRow(NamedTuple):
    """One row of ``results``, its fields in column order."""

    idx: int
    fingerprint: str
    ok: int
    value_kind: str | None
    value: str | bytes | None
    value_tag: bytes | None
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    attempts: int
    duration: float
    worker: str
    started: float
    recorded_at: float


INSERT_ROW = f"INSERT OR REPLACE INTO results VALUES ({','.join('?' * len(StoredRow._fields))})"


# ------------------------------------------------------------------ damage
_SQLITE_CORRUPT = 11  # sqlite3.SQLITE_CORRUPT from Python 3.11 on


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code: int | None = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF == _SQLITE_CORRUPT  # extended codes keep the primary low byte
    return "malformed" in str(exc)


def damaged(path: Path, exc: BaseException) -> CheckpointDamaged:
    """The error for a checkpoint whose pages SQLite finds corrupt, with both ways out."""
    kept = path.with_name(f"{path.stem}-salvaged{path.suffix or '.db'}")
    return CheckpointDamaged(
        f"checkpoint {path} is damaged ({exc}). Start afresh with another checkpoint path, "
        f"or keep what is readable: 'shoal report {path} --salvage {kept}' (in Python: "
        f"shoal.salvage_checkpoint({str(path)!r}, {str(kept)!r})), then resume with {kept}",
        path,
    )


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn SQLite's "database disk image is malformed" into ``CheckpointDamaged``.

    Other SQLite errors (locked, disk full, I/O) pass unchanged: they are not damage.
    """
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if _is_corrupt(exc):
            raise damaged(path, exc) from exc
        raise


# -------------------------------------------------------------------- meta
def read_meta(path: Path, conn: sqlite3.Connection) -> dict[str, str] | None:
    """The meta table of a shoal checkpoint, or None for an empty database.

    Raises:
        CheckpointMismatch: the file is not a shoal checkpoint, or of another schema.
        CheckpointDamaged: SQLite finds the file corrupt.
    """
    def not_ours(why: str) -> CheckpointMismatch:
        return CheckpointMismatch(f"{path} is not a shoal checkpoint ({why}); {FIX}")

    try:
        with reading(path):
            kinds = dict(conn.execute("SELECT name, type FROM sqlite_master "
                                      "WHERE type IN ('table', 'view', 'trigger')"))
            if not kinds:
                return None
            if not {"meta", "results"} <= kinds.keys():
                raise not_ours("an SQLite database without shoal's meta table")
            # shoal makes neither: a trigger could rewrite the rows it records.
            if set(kinds.values()) != {"table"}:
                raise not_ours("it holds views or triggers, which shoal never creates")
            meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:  # CheckpointDamaged is no DatabaseError
        raise not_ours(f"not an SQLite database: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise not_ours("its meta table was not written by shoal")
    schema = meta.get("schema")
    if schema == "1":
        raise CheckpointMismatch(
            f"checkpoint {path} was made by an older shoal (checkpoint schema 1), whose rows "
            "may hold pickles that nothing authenticates, so this version does not load "
            f"them; start afresh: {FIX}")
    if schema != SCHEMA_VERSION:
        raise CheckpointMismatch(f"{path} was made by another shoal version (schema "
                                 f"{schema}, not {SCHEMA_VERSION}); {FIX}")
    return meta


def create(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    """Write the schema and ``meta`` into an empty database, in one transaction."""
    conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once, at creation
    conn.executescript("BEGIN;" + SCHEMA)  # all or nothing
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    conn.execute("COMMIT")


# ------------------------------------------------------------ fingerprints
def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def item_fingerprint(item: Any) -> str:
    """Hash of the item's canonical form (tagged so JSON and pickle never collide).

    Raises:
        NotPicklable: the item is neither JSON nor picklable.
    """
    try:
        data = b"j" + json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        try:
            data = b"p" + wire.dumps(item)
        except Exception as exc:
            msg = f"a checkpoint cannot fingerprint a {type(item).__name__} item: {exc}"
            raise NotPicklable(msg) from exc
    return digest(data)


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
    return digest(b"\0".join(parts))


def job_fingerprint(fn: Callable[..., Any]) -> tuple[str, str]:
    """Return ``(module:qualname, code hash)`` identifying the job's function."""
    import functools

    if isinstance(fn, functools.partial):
        name, code_hash = job_fingerprint(fn.func)
        try:  # bound arguments change results, so they are part of the job
            bound = item_fingerprint((fn.args, sorted(fn.keywords.items())))
        except Exception:
            bound = "unhashable"
        return f"functools.partial({name})", digest(f"{code_hash}:{bound}".encode())
    # Functions and classes carry a __qualname__; a callable instance does not,
    # so it is named by its type and hashed by its type's __call__.
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(owner, '__module__', None)}:{owner.__qualname__}"
    init = getattr(fn, "__init__", None) if isinstance(fn, type) else None
    for candidate in (fn, init, type(fn).__call__):
        code = getattr(candidate, "__code__", None)
        if isinstance(code, CodeType):
            return name, _code_digest(code)
    return name, digest(name.encode())  # builtins: the name is all there is


# ------------------------------------------------------------------ values
def _json_exact(a: Any, b: Any) -> bool:
    # Equality alone would accept (1, 2) -> [1, 2] or an IntEnum -> int.
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_exact(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_exact(a[k], b[k]) for k in a)
    return bool(a == b)


def encode_value(value: Any) -> tuple[str, str | bytes]:
    """Return ``('json', text)`` or ``('pickle', blob)``.

    Raises:
        Exception: the value is not JSON and cannot be pickled.
    """
    try:
        text = json.dumps(value)
        if _json_exact(value, json.loads(text)):
            return "json", text
    except (TypeError, ValueError, RecursionError):
        pass
    return "pickle", wire.dumps(value)
