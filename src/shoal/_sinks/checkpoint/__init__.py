"""The SQLite checkpoint: an interrupted batch resumes from it.

``store`` is the ``ResultStore`` (open, restore, record, commit timer),
``format`` the file's schema and row codec, ``keys`` the authentication of
pickled rows, ``lock`` the one-run-at-a-time lock, ``salvage`` the rescue of
a damaged file.
"""

from shoal._sinks.checkpoint.salvage import salvage_checkpoint
from shoal._sinks.checkpoint.store import (
    CheckpointStore,
    CheckpointSummary,
    open_checkpoint,
    summarize,
)

__all__ = ["CheckpointStore", "CheckpointSummary", "open_checkpoint", "salvage_checkpoint",
           "summarize"]
