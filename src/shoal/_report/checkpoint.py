"""A checkpoint's rows as a ``BatchReport``, for ``shoal report run.db --html``.

Read-only and without unpickling anything: values are not read at all (the
report does not show them), and failures come back through ``restore_error``
(a builtin exception type by name, any other as ``RemoteError``), with their
stored traceback. Items are not stored in a checkpoint (only a fingerprint),
so each result's ``item`` is ``NOT_STORED``.

The ``started`` column (when an item's last attempt began) is read when the
checkpoint has it; a checkpoint without it gives a report with no timelines.
Its rows are the items of every run that wrote to the file, so they count as
run, not restored.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from shoal._core.results import BatchReport, ItemResult
from shoal._core.wire import ErrorData, restore_error
from shoal._sinks.checkpoint import summarize


class _NotStored:
    def __repr__(self) -> str:
        return "(item not stored in the checkpoint)"


NOT_STORED: Any = _NotStored()


def read_report(path: str | os.PathLike[str]) -> BatchReport[Any]:
    """The results a checkpoint holds, in index order, as a ``BatchReport``.

    Raises:
        InvalidOptionError: ``path`` is a directory or does not exist.
        CheckpointMismatch: the file is not a shoal checkpoint.
    """
    info = summarize(path)  # validates the file: a shoal checkpoint of a known schema
    p = Path(os.fspath(path))
    conn = sqlite3.connect(p.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
        started = "started" if "started" in columns else "0.0"
        rows = conn.execute(
            "SELECT idx, ok, error_type, error_message, error_traceback, attempts, duration, "
            f"worker, recorded_at, {started} FROM results ORDER BY idx")
        results: list[ItemResult[Any]] = []
        first = last = 0.0
        for idx, ok, etype, emsg, etb, attempts, duration, worker, recorded, start in rows:
            error = None if ok else restore_error(ErrorData(etype or "Exception", emsg or "",
                                                            etb or ""))
            results.append(ItemResult(idx, NOT_STORED, ok=bool(ok), error=error,
                                      attempts=attempts, duration=duration, worker=worker,
                                      started=float(start or 0.0)))
            begin = float(start) if start else recorded - duration
            first = begin if not first else min(first, begin)
            last = max(last, recorded)
    finally:
        conn.close()
    return BatchReport(
        results, backend="(from checkpoint)",
        backend_reason=f"rows of checkpoint {info['path']}, job {info['job']}",
        workers=len({r.worker for r in results}), wall_time=max(0.0, last - first),
        started_at=0.0, settings={"checkpoint": info["path"], "job": info["job"],
                                  "python": info["python"]})
