"""The two extension points of the engine: observers and result stores.

Both are called by the engine on the *consumer* side, so they need no locking
of their own unless documented otherwise:

* a ``RunObserver`` sees the run start, every batch of settled results, and
  the end (progress bars and callbacks are observers);
* a ``ResultStore`` is asked, as each input item is pulled, whether it already
  has a result for it (checkpoint resume), and records each settled result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shoal._core.results import BatchReport, ItemResult


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What is known when a run starts."""

    total: int | None  # None when the input has no len() and no total= hint
    backend: str
    workers: int


@runtime_checkable
class RunObserver(Protocol):
    """Receives the life of one run. Called on the consumer thread."""

    def on_start(self, info: RunInfo) -> None: ...

    def on_results(self, results: Sequence[ItemResult[Any]]) -> None:
        """Settled results, in delivery order (input order when ordered)."""

    def on_finish(self, report: BatchReport[Any] | None) -> None:
        """The run ended; ``report`` is None when no report was built (imap)."""

    # Optional: ``on_backend(info: RunInfo) -> None``, told which backend
    # ``backend="auto"`` chose once its probe is over (``on_start`` saw "auto").


@runtime_checkable
class ResultStore(Protocol):
    """Durable results of earlier runs of the same job (a checkpoint)."""

    def restore(self, index: int, item: Any) -> ItemResult[Any] | None:
        """Return the stored result for this item, or None to run it.

        Called while the engine pulls input, possibly from a worker thread,
        with the engine's lock held: it must be quick and thread-safe.

        Raises:
            CheckpointMismatch: the stored item at ``index`` is not ``item``.
        """

    def record(self, results: Sequence[ItemResult[Any]]) -> None:
        """Store newly settled results (never called with restored ones)."""

    def close(self) -> None:
        """Make everything recorded durable and release the store."""
