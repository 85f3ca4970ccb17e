"""What a Dask run is set up from: its traits and probe, its options, its job.

Pure or nearly so (the main-guard check reads the caller's frames and its
script), shared by ``DaskBackend`` and the warm ``DaskWorkers``.
"""

from __future__ import annotations

import ast
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from shoal._backends._base import Traits
from shoal._core.errors import BrokenBackend, InvalidOptionError, NotPicklable
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams, ChunkPolicy

#: the first task of each worker thread holds at most this many items ...
PROBE_ITEMS = 64
#: ... and stops after the first item that ends this long after it started:
#: tiny items are timed over dozens of them in one round trip, not one (whose
#: time is mostly fixed costs), while a slow first item still comes back alone
PROBE_SECONDS = 0.002
TRAITS = Traits(
    "dask", default_workers=lambda: 2, dispatcher_reads_results=True,
    # A task costs the driver and the worker a few ms of CPU and a round trip
    # of tens of ms whatever it holds: chunks of 0.05-0.1 s (what remains is
    # cut into four per thread, never under 0.05 s, so the threads finish
    # together); a probe times dozens of items, so growth may be steep; the
    # scheduler holds the items of every task in flight (Dask warns of task
    # graphs over 10 MB).
    chunking=ChunkParams(target_seconds=0.1, min_seconds=0.05, growth=64.0,
                         chunks_per_worker=4, max_items=500_000, max_bytes=4_000_000),
    isolates_crashes=True, recycles_workers=False)


def probe_size(policy: ChunkPolicy, left: int | None, threads: int) -> int:
    """Items of a probe: ``PROBE_ITEMS``, or fewer so that a short input is
    not held back by the probes (each holds at most its share of the chunks
    the input would be cut into); within the policy's limit."""
    size = PROBE_ITEMS
    params = policy.params
    if left is not None and params is not None:
        size = min(size, left // (params.chunks_per_worker * threads))
    if policy.limit is not None:
        size = min(size, policy.limit)
    return max(1, size)


def read_backend_options(options: Options) -> dict[str, Any]:
    """``backend_options`` for dask, checked.

    Raises:
        InvalidOptionError: a key it does not understand, or a bad value;
            ``max_items_per_worker``, which Dask does not support.
    """
    extra = options.backend_options
    per_thread = extra.get("tasks_per_thread", 2)
    valid = (set(extra) <= {"client", "cluster_kwargs", "tasks_per_thread"}
             and type(per_thread) is int and per_thread >= 1
             and isinstance(extra.get("cluster_kwargs", {}), Mapping))
    if not valid:
        raise InvalidOptionError(
            f"backend_options for dask accept client (a distributed.Client), "
            f"cluster_kwargs (a dict) and tasks_per_thread (an int >= 1); got {dict(extra)!r}")
    if options.max_items_per_worker is not None:
        raise InvalidOptionError(
            'max_items_per_worker is not supported by backend="dask": Dask manages its '
            "workers' lifetimes (see `dask worker --lifetime`)")
    return {"client": extra.get("client"), "cluster_kwargs": extra.get("cluster_kwargs", {}),
            "tasks_per_thread": per_thread}


def check_main_guard(options: Options, client: Any, cluster_kwargs: Mapping[str, Any]) -> None:
    """Refuse to start a LocalCluster that would re-run the calling script.

    Raises:
        BrokenBackend: naming the line and the fix (see ``unguarded_main_call``).
    """
    if options.address or client is not None or not cluster_kwargs.get("processes", True):
        return
    import dask.config

    if dask.config.get("distributed.worker.multiprocessing-method", "spawn") == "fork":
        return  # forked workers do not import the script
    where = unguarded_main_call()
    if where is not None:
        raise BrokenBackend(
            f'backend="dask" starts a LocalCluster, whose worker processes import your script '
            f"and would run its top-level code again ({where}); put that code under "
            '`if __name__ == "__main__":`')


def pickle_job(fn: Callable[[Any], Any], initializer: Callable[..., Any] | None,
               initargs: tuple[Any, ...], init_token: str) -> bytes:
    """The job every task carries: fn, and the initializer with the token it runs once per.

    Raises:
        NotPicklable: fn or the initializer cannot be pickled.
    """
    try:
        return cloudpickle.dumps((fn, initializer, initargs, init_token),  # type: ignore[no-any-return]
                                 protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NotPicklable(
            f"fn cannot be pickled to send it to Dask workers: {exc!r}; define it at "
            "module level (importable on the workers) or make it cloudpickle-able"
        ) from exc


def unguarded_main_call() -> str | None:
    """Where the running script calls shoal from unguarded top-level code, if it does.

    A ``LocalCluster`` starts its worker processes with ``spawn``: each
    imports the script that started the cluster, as ``__mp_main__``, and runs
    its top-level code again, which starts a cluster of its own and fails
    (Dask then prints a dozen tracebacks and ``Nanny failed to start``).
    Returns ``"path:line"`` of the top-level statement of ``__main__`` that
    led here when it is not under ``if __name__ == "__main__":``; None when
    it is, or when there is no script file (a notebook, ``python -c``).
    Call it on the caller's thread: other threads do not see its frames.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    frame: Any = sys._getframe(1)
    line = None
    while frame is not None:  # the outermost frame of __main__'s own top-level code
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        with open(path, "rb") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for stmt in tree.body:
        if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
            return None if _is_main_guard(stmt) else f"{path}:{line}"
    return None


def _is_main_guard(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    texts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and texts == ["__main__"]
