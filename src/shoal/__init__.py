"""shoal: batch processing that survives.

Run a function over many items on one core, threads, processes, an asyncio
loop or a Dask cluster, with per-item results, retries, timeouts, rate
limits, bounded memory, progress and checkpoint/resume::

    import shoal
    values = shoal.map(fetch, urls, backend="threads", workers=50, retries=3)
    report = shoal.run(score, rows, on_error="collect_errors")
    for r in shoal.imap(parse, open("big.jsonl")): ...
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from shoal._core.api import aimap, amap, arun_batch, imap, map, run
from shoal._core.bridge import arun
from shoal._core.errors import (
    BackendUnavailable,
    BatchInterrupted,
    BrokenBackend,
    CheckpointDamaged,
    CheckpointInUse,
    CheckpointMismatch,
    CheckpointUntrusted,
    InvalidItemsError,
    InvalidOptionError,
    NotPicklable,
    RemoteError,
    RemoteTraceback,
    ShoalError,
    WorkerCrashed,
)
from shoal._core.options import Options
from shoal._core.results import BatchReport, ItemResult
from shoal._policies.rate import RateLimit
from shoal._policies.retry import RetryPolicy
from shoal._split import iter_batches, merge, split

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from shoal._sinks.checkpoint import open_checkpoint, salvage_checkpoint
    from shoal._sinks.progress import ProgressEvent

# Imported on first use, so that ``import shoal`` stays light (the checkpoint
# store brings sqlite3 and cloudpickle; progress brings its renderers).
_LAZY = {"open_checkpoint": "shoal._sinks.checkpoint", "ProgressEvent": "shoal._sinks.progress",
         "salvage_checkpoint": "shoal._sinks.checkpoint"}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackendUnavailable",
    "BatchInterrupted",
    "BatchReport",
    "BrokenBackend",
    "CheckpointDamaged",
    "CheckpointInUse",
    "CheckpointMismatch",
    "CheckpointUntrusted",
    "InvalidItemsError",
    "InvalidOptionError",
    "ItemResult",
    "NotPicklable",
    "Options",
    "ProgressEvent",
    "RateLimit",
    "RemoteError",
    "RemoteTraceback",
    "RetryPolicy",
    "ShoalError",
    "WorkerCrashed",
    "aimap",
    "amap",
    "arun",
    "arun_batch",
    "imap",
    "iter_batches",
    "map",
    "merge",
    "open_checkpoint",
    "run",
    "salvage_checkpoint",
    "split",
]
