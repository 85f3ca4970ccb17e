"""Backends, found by name and imported only when used.

A backend starts workers that pull tasks from the engine (``Engine.acquire``),
run them and report (``Engine.complete``); it can ``abandon`` a task that timed
out and ``shutdown``. Everything else (retries, timeouts, rate limits, ordering,
failure strategies, progress, checkpoints) is the engine's.
"""

from __future__ import annotations

import importlib
from typing import Any

from shoal._backends._base import Backend, InlineBackend, WarmWorkers

# name -> "module:Class"; the module is imported on first use only, so that
# ``import shoal`` never imports multiprocessing, dask or numpy.
_REGISTRY: dict[str, str] = {
    "sequential": "shoal._backends._sequential:SequentialBackend",
    "threads": "shoal._backends._threads:ThreadBackend",
    "asyncio": "shoal._backends._asyncio:AsyncioBackend",
    "processes": "shoal._backends._processes.pool:ProcessBackend",
    "dask": "shoal._backends._dask.backend:DaskBackend",
}

def _load(spec: str) -> Any:
    """The class a "module:Class" spec names, imported now."""
    module_name, _, cls_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name``.

    Raises:
        KeyError: no backend of that name (options validation reports it first).
        BackendUnavailable: the backend's optional dependency is missing.
    """
    cls: type[Backend] = _load(_REGISTRY[name])
    return cls


# name -> "module:Class" of the backend's warm workers (``WarmWorkers``: what a
# ``shoal.Pool`` keeps between runs). A kind not listed has none: a pool's run
# of that kind starts and stops its own workers, as ``shoal.map`` does.
_WARM: dict[str, str] = {
    "sequential": "shoal._backends._sequential:SequentialWorkers",
    "threads": "shoal._backends._threads:ThreadWorkers",
    "processes": "shoal._backends._processes.pool:ProcessWorkers",
    "dask": "shoal._backends._dask.warm:DaskWorkers",
}


def warm_class(name: str) -> type[WarmWorkers] | None:
    """The class of warm workers of backend ``name``, or None if it has none.

    A pool makes one with ``cls(options)`` (``workers`` defaults to the
    options' or the backend's): the pool's validated ``Options``
    (``workers``, ``initializer``/``initargs``, ``max_items_per_worker``,
    ``address``, ``backend_options`` are the pool's, the same for every run).

    Raises:
        BackendUnavailable: the backend's optional dependency is missing.
    """
    spec = _WARM.get(name)
    if spec is None:
        return None
    cls: type[WarmWorkers] = _load(spec)
    return cls


__all__ = ["Backend", "InlineBackend", "WarmWorkers", "backend_class", "warm_class"]
