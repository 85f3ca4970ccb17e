"""shoal's exception hierarchy.

A failure of one item is *data*: it lives in ``ItemResult.error`` and never
raises unless the failure strategy is ``"all_or_nothing"`` (then the item's own
exception is raised, unchanged in type). The classes below are for everything
else::

    ShoalError(Exception)
    ├── InvalidOptionError(ShoalError, ValueError)   bad option or argument value
    ├── InvalidItemsError(ShoalError, TypeError)     ``items`` is not iterable
    ├── BackendUnavailable(ShoalError, ImportError)  optional extra not installed
    ├── CheckpointMismatch(ShoalError, ValueError)   checkpoint made by another job
    │   └── CheckpointUntrusted(CheckpointMismatch)  a pickled row not signed by your key
    ├── BrokenBackend(ShoalError, RuntimeError)      the pool itself died
    ├── WorkerCrashed(ShoalError, RuntimeError)      per item: its worker died
    ├── NotPicklable(ShoalError, TypeError)          fn/item/result cannot cross
    ├── RemoteError(ShoalError)                      an item's exception that could only
    │                                                travel as data (type name, message,
    │                                                traceback): unpicklable, or restored
    │                                                from a checkpoint
    ├── RemoteTraceback(ShoalError)                  a worker-side traceback, as __cause__
    ├── InvalidGraphError(ShoalError, TypeError)     a graph wired with something that is
    │                                                not a node, an action or params
    ├── GraphError(ShoalError, RuntimeError)         a graph cannot go on: no start node,
    │                                                or max_steps node runs reached
    ├── cli.io.CliError(ShoalError)                  the command line: one line, exit 2
    ├── cli.io.InvalidRecord(ShoalError, ValueError) per record: an input line that
    │                                                does not parse
    ├── CheckpointDamaged(ShoalError, OSError)       the file is corrupt: salvage or start afresh
    └── CheckpointInUse(ShoalError, RuntimeError)    another run has the checkpoint open
    BatchInterrupted(KeyboardInterrupt)              Ctrl-C; carries the partial report
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal._core.results import BatchReport


class ShoalError(Exception):
    """Base class of every exception shoal raises on its own account."""


class InvalidOptionError(ShoalError, ValueError):
    """An option or argument has a value shoal cannot use."""


class InvalidItemsError(ShoalError, TypeError):
    """``items`` is not an iterable (or async iterable)."""


class BackendUnavailable(ShoalError, ImportError):
    """A backend needs an optional dependency that is not installed."""


class CheckpointMismatch(ShoalError, ValueError):
    """A checkpoint file belongs to another job (other function or items)."""


class CheckpointUntrusted(CheckpointMismatch):
    """A pickled row of a checkpoint is not authenticated by your checkpoint key.

    Loading a pickle can run any code its author chose, so shoal refuses the
    row (it made the file elsewhere, or someone changed it) unless the
    checkpoint is opened with ``trust_pickles=True``.

    Attributes:
        path: the checkpoint file.
        index: the index of the refused row.
    """

    def __init__(self, message: str, path: Any = None, index: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path, self.index))


class BrokenBackend(ShoalError, RuntimeError):
    """The backend can no longer run work (not one item: the whole pool)."""


class WorkerCrashed(ShoalError, RuntimeError):
    """The worker running an item died (exit code or signal in the message).

    Attributes:
        exitcode: the process exit code; negative for a signal, as in
            ``multiprocessing``; None when unknown.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.exitcode))


def describe_exit(code: int) -> str:
    """'exited with code 3' or 'died with signal SIGKILL (-9)'."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"died with signal {name} ({code})"


class NotPicklable(ShoalError, TypeError):
    """A function, item or result cannot be serialized to cross to a worker."""


class RemoteError(ShoalError):
    """An item's exception known only as data: its type's name, message and traceback.

    What an item failed with when its exception could not be pickled to cross
    from a worker (on every backend alike), and what a checkpoint restores for
    an exception whose type is not a builtin: the checkpoint never unpickles
    an exception, so reading one back cannot run code.

    Attributes:
        type_name: the original type, ``"ValueError"`` or ``"module.QualName"``.
        message: ``str()`` of the original exception.
        traceback: its formatted traceback (worker side), or "".
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class RemoteTraceback(ShoalError):
    """The formatted traceback of an exception raised in another process.

    Attached as ``__cause__`` of the re-raised exception, so the worker-side
    frames print under "The above exception was the direct cause of...".
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class CheckpointDamaged(ShoalError, OSError):
    """SQLite finds the checkpoint file corrupt ("database disk image is malformed").

    Start afresh with another path, or copy the readable rows into a new file
    with ``shoal.salvage_checkpoint`` (``shoal report FILE --salvage NEW``).

    Attributes:
        path: the checkpoint file.
    """

    def __init__(self, message: str, path: Any = None) -> None:
        super().__init__(message)  # one argument: OSError would read two as (errno, strerror)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path))


class CheckpointInUse(ShoalError, RuntimeError):
    """Another run (this process or another) has the checkpoint open.

    Attributes:
        path: the checkpoint file.
        pid: the process holding it, when known.
    """

    def __init__(self, message: str, path: Any = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path, self.pid))


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a batch. ``report`` holds every result finished so far."""

    def __init__(self, report: BatchReport[Any]) -> None:
        super().__init__(
            f"batch interrupted after {report.total} finished item(s); "
            "see .report for their results"
        )
        self.report = report


class InvalidGraphError(ShoalError, TypeError):
    """A graph or node was given the wrong kind of thing: a successor or start
    that is not a node, an action that is not a string, params that are not a dict."""


class GraphError(ShoalError, RuntimeError):
    """A graph cannot go on: it has no start node, or it reached ``max_steps`` node runs."""


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where Python has it (3.11+), once."""
    adder = getattr(exc, "add_note", None)
    if adder is not None and note not in getattr(exc, "__notes__", ()):
        adder(note)
