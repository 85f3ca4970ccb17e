"""The one wire format: how values, items and errors cross a process boundary.

Used by every backend that leaves the driver's process (processes, dask) and
by the checkpoint, so that there is one answer to each of these questions:

* **pickling**: ``dumps`` tries the C pickler (fastest) and falls back to
  cloudpickle (lambdas, closures, classes of ``__main__`` or a notebook);
  ``loads`` is plain ``pickle.loads``.
* **a failed item's exception**: it crosses as a ``CarriedError``, which on
  the other side becomes the exception itself with the worker-side traceback
  as its ``__cause__`` (a ``RemoteTraceback``), like CPython's
  ``_ExceptionWithTraceback``. An exception that does not survive a pickle
  round trip crosses as a ``RemoteError`` holding its type name, message and
  traceback text: the one documented type for it, on every backend.
* **an exception as data** (the checkpoint stores no pickled exception):
  ``ErrorData`` is its type name, message and traceback text; ``restore_error``
  rebuilds builtin exception types by name and any other as ``RemoteError``,
  so reading it back never runs code.
* **the culprit search**: a chunk is one pickle; only when that fails are its
  members pickled one by one (``unpicklable``) so that one bad value fails
  its own item and no other.
"""

from __future__ import annotations

import builtins
import pickle
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from shoal._core.errors import NotPicklable, RemoteError, RemoteTraceback

PICKLE_PROTOCOL = 5


def dumps(obj: Any, by_value: bool = False, *, other_main: bool = False) -> bytes:
    """Pickle ``obj`` with protocol 5: the C pickler, else cloudpickle.

    ``by_value``: use cloudpickle at once. ``other_main``: the other side
    runs another ``__main__`` (a Dask worker), so a plain pickle that refers
    to ``__main__`` by name is redone by value (as Dask does).

    Raises:
        Exception: whatever cloudpickle raised for an object it cannot pickle.
    """
    if not by_value:
        try:
            blob = pickle.dumps(obj, PICKLE_PROTOCOL)
            if not other_main or b"__main__" not in blob:
                return blob
        except Exception:
            pass  # cloudpickle below can do more, or raises the error worth showing
    return cloudpickle.dumps(obj, PICKLE_PROTOCOL)  # type: ignore[no-any-return]


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle what ``dumps`` made (only ever data shoal itself sent).

    Raises:
        Exception: whatever unpickling raised (a class this side cannot import...).
    """
    return pickle.loads(data)


def describe_pickling_error(what: str, obj: Any, exc: BaseException) -> str:
    """One sentence: what could not be pickled, its type, and why."""
    return f"{what} (a {type(obj).__qualname__}) cannot be pickled: {type(exc).__name__}: {exc}"


def unpicklable(values: Sequence[Any], what: str,
                by_value: bool = False) -> dict[int, NotPicklable]:
    """The members of ``values`` that do not pickle, each with its error.

    ``what`` names a member in the message (``"the result"``, ``"item"``).
    Call it only after pickling the whole sequence failed: it pickles each
    member once.
    """
    bad: dict[int, NotPicklable] = {}
    for k, value in enumerate(values):
        try:
            dumps(value, by_value)
        except Exception as exc:
            bad[k] = NotPicklable(describe_pickling_error(what, value, exc))
    return bad


# ----------------------------------------------------------------- errors
@dataclass(frozen=True, slots=True)
class ErrorData:
    """An exception as plain data: safe to store, and to read back anywhere."""

    type_name: str  # "ValueError", or "module.QualName" for a class outside builtins
    message: str
    traceback: str  # formatted, worker-side frames included; "" if unknown

    @classmethod
    def of(cls, exc: BaseException) -> ErrorData:
        if isinstance(exc, RemoteError):
            return cls(exc.type_name, exc.message, exc.traceback)
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else (
            f"{kind.__module__}.{kind.__qualname__}")
        cause = exc.__cause__
        text = cause.tb if isinstance(cause, RemoteTraceback) else "".join(
            traceback.format_exception(exc))
        return cls(name, str(exc), text)


def restore_error(data: ErrorData) -> BaseException:
    """The exception ``data`` describes, built without running stored code.

    A builtin exception type comes back as itself, made from the message; any
    other type as a ``RemoteError`` that names it. The traceback text is the
    ``__cause__`` (a ``RemoteTraceback``), as for an error from a worker.
    """
    kind = getattr(builtins, data.type_name, None)
    exc: BaseException
    if isinstance(kind, type) and issubclass(kind, BaseException):
        try:
            exc = kind(data.message)
        except Exception:  # a builtin whose constructor wants other arguments
            exc = RemoteError(data.type_name, data.message, data.traceback)
    else:
        exc = RemoteError(data.type_name, data.message, data.traceback)
    if data.traceback:
        exc.__cause__ = RemoteTraceback(data.traceback)
    return exc


def _rebuild(exc: BaseException, tb: str) -> BaseException:
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
        exc.__traceback__ = None  # the worker's frames are in the cause
    return exc


class CarriedError:
    """A failed item's exception on its way across the wire.

    Unpickled, it *is* the exception (``__reduce__`` rebuilds it) with the
    worker-side traceback as ``__cause__``. An exception that cannot make a
    pickle round trip travels as a ``RemoteError`` with its type name,
    message and traceback.
    """

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException) -> None:
        cause = exc.__cause__
        self.tb = cause.tb if isinstance(cause, RemoteTraceback) else "".join(
            traceback.format_exception(exc))
        try:
            pickle.loads(dumps(exc))
            self.exc = exc
        except Exception as why:
            data = ErrorData.of(exc)
            self.exc = RemoteError(
                data.type_name, f"{data.message} (the exception could not be pickled: "
                f"{type(why).__name__}: {why})", self.tb)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.exc, self.tb)


def carried(errors: dict[int, BaseException] | None) -> dict[int, CarriedError] | None:
    """``Outcome.errors`` made ready to pickle."""
    return None if errors is None else {k: CarriedError(e) for k, e in errors.items()}
