"""Planning a run: which backend, how many workers, chunk sizes, the in-flight window.

Pure decisions, written once for every backend: they read the options and
what a backend declares about itself (``Traits``), never a backend's name.
Option combinations that cannot work on the chosen backend are refused here,
before any item runs, with an ``InvalidOptionError`` that names the conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shoal._backends._base import Traits
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._policies.chunking import ChunkPolicy

#: the in-flight window: at least this many items ...
MIN_WINDOW = 64
#: ... and this many chunks per worker: one running, the rest finished and
#: waiting for an earlier one (ordered delivery) or queued behind it
CHUNKS_PER_WORKER_IN_FLIGHT = 4


@dataclass(frozen=True, slots=True)
class Plan:
    """How one backend runs this run."""

    workers: int
    chunks: ChunkPolicy
    window: Callable[[int], int]  # chunk size -> max_in_flight


def check(opts: Options, traits: Traits) -> None:
    """Refuse the option combinations ``traits`` cannot honour.

    Raises:
        InvalidOptionError: naming the conflict and the fix.
    """
    name = traits.name
    if opts.address is not None and name != "dask":
        raise InvalidOptionError(
            f'address is the Dask scheduler to run on, but backend="{name}"; '
            'use backend="dask" (or leave backend="auto"), or drop address')
    if opts.max_items_per_worker is not None and not traits.recycles_workers:
        raise InvalidOptionError(
            f'max_items_per_worker is not supported by backend="{name}": shoal does not '
            'replace its workers; use backend="threads" or backend="processes" to recycle them')
    chunk = opts.chunk_size
    if chunk == "auto" or chunk <= 1:
        return
    if opts.timeout is not None and not traits.streams_items and not traits.shared_lots:
        raise InvalidOptionError(
            f'timeout is per item, and backend="{name}" runs a chunk as one unit, so it '
            f"needs chunk_size=1 (got chunk_size={chunk}); drop chunk_size or use "
            'chunk_size="auto"')
    if opts.rate is not None and chunk > opts.rate.burst:
        raise InvalidOptionError(
            f"chunk_size={chunk} needs {chunk} rate tokens at once, more than the burst "
            f"({opts.rate.burst}) of the rate limit; use chunk_size <= {opts.rate.burst}, or "
            f"a burst of at least {chunk}")


def plan(opts: Options, traits: Traits, total: int | None, workers: int | None = None,
         pace: float | None = None) -> Plan:
    """The chunk policy and in-flight rule of ``traits``' backend for ``opts``.

    ``total``: items this backend will be handed, when known; ``workers``:
    overrides the option (the auto probe runs on one worker); ``pace``:
    seconds per item already measured (by the auto probe, or by the last run
    of the same function on a pool's workers), where chunk sizing starts.
    """
    n = workers or opts.workers or traits.default_workers()
    fixed = opts.chunk_size if opts.chunk_size != "auto" else None
    limit = _chunk_limit(opts, traits, n)
    if traits.shared_lots:
        # A lot is shared by the workers, so it is sized by them, not by time.
        lot = fixed or min(traits.shared_lots, n)
        chunks = ChunkPolicy(None, workers=n, total=total, fixed=lot, limit=limit)
    else:
        params = None if fixed is None and limit == 1 else traits.chunking
        chunks = ChunkPolicy(params, workers=n, total=total, fixed=fixed, limit=limit)
    if pace is not None:
        chunks.seed(pace)
    return Plan(n, chunks, window_rule(opts, traits, n))


def _chunk_limit(opts: Options, traits: Traits, workers: int) -> int | None:
    """The most items a chunk may hold, whatever its speed (see chunking.py)."""
    limits: list[int] = []
    if opts.rate is not None:
        limits.append(opts.rate.burst)  # a chunk takes its tokens at once
    if opts.timeout is not None and not traits.streams_items:
        limits.append(1)  # a hung item is cut alone
    if opts.rate is not None and traits.shared_lots:
        limits.append(1)  # the bucket then paces each item, not each lot
    if opts.max_in_flight is not None:
        share = 2 if traits.shared_lots else workers
        limits.append(max(1, opts.max_in_flight // share))
    return min(limits) if limits else None


def window_rule(opts: Options, traits: Traits, workers: int) -> Callable[[int], int]:
    """``max_in_flight`` for a given chunk size: the caller's, or the one rule.

    Every worker busy with a chunk, and as many chunks finished and waiting
    for an earlier one (ordered delivery) or queued: ``CHUNKS_PER_WORKER_IN_FLIGHT``
    chunks per worker. Where workers share a lot, a worker holds one item at
    a time, plus the lot being handed out.
    """
    if opts.max_in_flight is not None:
        limit = opts.max_in_flight
        return lambda chunk: limit
    depth = CHUNKS_PER_WORKER_IN_FLIGHT * workers
    if traits.shared_lots:
        return lambda chunk: max(MIN_WINDOW, depth + chunk)
    return lambda chunk: max(MIN_WINDOW, depth * chunk)
