"""Shared fixtures: every behavioural test runs on every backend.

``backend_opts`` is parametrized over all backends; a backend whose module is
not importable in this checkout is skipped, never silently dropped from the
list. The Dask cluster is started once per session, on loopback, only when a
dask-parametrized test runs, and closed at the end.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

ALL_BACKENDS = ["sequential", "threads", "asyncio", "processes", "dask"]


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"shoal._backends._{name}") is not None


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=40,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _opts(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    if not _available(name):
        pytest.skip(f"backend {name!r} is not in this checkout")
    opts: dict[str, Any] = {"backend": name}
    if name == "dask":
        opts["address"] = request.getfixturevalue("dask_cluster").scheduler_address
    return opts


@pytest.fixture(params=ALL_BACKENDS)
def backend_opts(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options selecting one backend (and its cluster address for dask)."""
    return _opts(request, request.param)


@pytest.fixture(params=["threads", "asyncio", "processes", "dask"])
def concurrent_opts(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Backends with real concurrency (timeouts can be enforced)."""
    return _opts(request, request.param)


def pytest_configure(config: pytest.Config) -> None:
    import cloudpickle

    # Checkpoints sign pickled rows with the user's key file unless this is
    # set: the suite (and the subprocesses it starts) must not create one in
    # the real home directory. Tests of the key file itself unset it.
    os.environ.setdefault("SHOAL_CHECKPOINT_KEY", secrets.token_hex(32))

    import workfns

    # Worker processes and Dask workers cannot import the tests folder.
    cloudpickle.register_pickle_by_value(workfns)
