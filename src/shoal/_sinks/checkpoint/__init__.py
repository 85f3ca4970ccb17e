"""The SQLite checkpoint: an interrupted batch resumes from it.

``store`` is the ``ResultStore`` (open, restore, record, commit timer),
``format`` the file's schema and row codec, ``keys`` the authentication of
pickled rows, ``lock`` the one-run-at-a-time lock, ``files`` the opening of
the file, ``reading`` the read-only summaries, ``salvage`` the rescue of a
damaged file.
"""

from shoal._sinks.checkpoint.reading import (
    CheckpointSummary,
    StoredFailure,
    stored_failures,
    summarize,
)
from shoal._sinks.checkpoint.salvage import salvage_checkpoint
from shoal._sinks.checkpoint.store import CheckpointStore, open_checkpoint

__all__ = ["CheckpointStore", "CheckpointSummary", "StoredFailure", "open_checkpoint",
           "salvage_checkpoint", "stored_failures", "summarize"]
