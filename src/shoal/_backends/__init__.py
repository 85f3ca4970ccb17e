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

# name -> "module:Class" of the backend's warm workers (``WarmWorkers``),
# kept between runs by a ``shoal.Pool``; imported on first use only.
_WARM_REGISTRY: dict[str, str] = {
    "processes": "shoal._backends._processes.pool:ProcessWorkers",
}


def _load(spec: str) -> Any:
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


def warm_class(name: str) -> type[WarmWorkers] | None:
    """The class of warm workers registered for backend ``name``, or None
    when that backend keeps no workers between runs (each run starts its own).

    Construct it as ``cls(options, workers)``: ``options.initializer`` runs
    once per worker, ``workers`` is the default of each run's.

    Raises:
        BackendUnavailable: the backend's optional dependency is missing.
    """
    spec = _WARM_REGISTRY.get(name)
    if spec is None:
        return None
    cls: type[WarmWorkers] = _load(spec)
    return cls


__all__ = ["Backend", "InlineBackend", "WarmWorkers", "backend_class", "warm_class"]
