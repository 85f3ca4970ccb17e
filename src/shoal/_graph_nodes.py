"""KayGraph's node classes (prep / exec / post) over the engine; ``shoal.graph`` re-exports them.

Nodes never own pools, retry loops or timers. Every call of ``exec`` (one per
node run, or one per element of a batch) goes through the engine
(``shoal.imap`` / ``shoal.aimap``), so retries, timeouts, worker limits and
progress are the engine's, and retry state lives in each item's own result,
never in the node: a node shared by many threads has nothing to race on.
``exec_fallback`` runs on the calling thread once an item has used all its
attempts; if it raises, the node stops and the exception propagates.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import shoal
from shoal._core.bridge import arun
from shoal._core.errors import InvalidGraphError, InvalidOptionError
from shoal._core.results import ItemResult
from shoal._policies.retry import RetryPolicy

N = TypeVar("N", bound="BaseNode")
DEFAULT_ACTION = "default"


class BaseNode:
    """Something a ``Graph`` can run: ``run(shared)`` returns the next action.

    Successors are wired with ``a >> b`` (the default action) and
    ``a - "action" >> b``; both return ``b`` so chains read left to right.

    Args:
        node_id: a name for logs and warnings (default: ``"<Class>_<id>"``).
    """

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or f"{type(self).__name__}_{id(self)}"
        self.params: dict[str, Any] = {}
        self.successors: dict[str, BaseNode] = {}
        self.logger = logging.getLogger(type(self).__name__)

    def set_params(self, params: dict[str, Any]) -> None:
        """Replace ``self.params`` with a copy of ``params``.

        A graph sets its own params on every node it runs, as KayGraph does.

        Raises:
            InvalidGraphError: ``params`` is not a dict.
        """
        if not isinstance(params, dict):
            raise InvalidGraphError(f"params must be a dict, got {type(params).__name__}")
        self.params = dict(params)

    def next(self, node: N, action: str = DEFAULT_ACTION) -> N:
        """Run ``node`` after this one when ``run`` returns ``action``; return ``node``.

        Raises:
            InvalidGraphError: ``node`` is not a node or ``action`` is not a string.
        """
        if not isinstance(node, BaseNode):
            raise InvalidGraphError(f"a successor must be a node, got {type(node).__name__}")
        if not isinstance(action, str):
            raise InvalidGraphError(f"an action must be a string, got {action!r}")
        if action in self.successors:
            previous = type(self.successors[action]).__name__
            warnings.warn(f"Node {self.node_id}: Overwriting successor for action '{action}'. "
                          f"Previous: {previous}, New: {type(node).__name__}", stacklevel=3)
        self.successors[action] = node
        return node

    def __rshift__(self, node: N) -> N:
        return self.next(node)

    def __sub__(self, action: str) -> _Transition:
        if not isinstance(action, str):
            return NotImplemented
        return _Transition(self, action)

    def run(self, shared: Any) -> str | None:
        """Run this node alone (its successors are not run: use a ``Graph`` for that).

        Raises:
            BaseException: whatever the node raises.
        """
        self._warn_unfollowed()
        return self._run(shared)

    async def run_async(self, shared: Any) -> str | None:
        """``run`` from a coroutine.

        Raises:
            BaseException: whatever the node raises.
        """
        self._warn_unfollowed()
        return await self._run_async(shared)

    def _warn_unfollowed(self) -> None:
        if self.successors:
            warnings.warn(f"Node {self.node_id}: Has {len(self.successors)} successors but "
                          "won't execute them. Use Graph for graph execution.", stacklevel=3)

    def _run(self, shared: Any) -> str | None:
        """One run of the node on ``shared``; what a graph calls."""
        raise NotImplementedError

    async def _run_async(self, shared: Any) -> str | None:
        # A synchronous node runs inline on the loop's thread.
        return self._run(shared)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_id}>"


class _Transition:
    """The ``a - "action"`` half of ``a - "action" >> b``."""

    def __init__(self, source: BaseNode, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, node: N) -> N:
        return self.source.next(node, self.action)


class Node(BaseNode):
    """One unit of work with retries: ``prep`` -> ``exec`` -> ``post``.

    Args:
        max_retries: attempts of ``exec`` per call (1 = no retry), as in KayGraph.
        wait: seconds between two attempts (constant, no jitter).
        node_id: as ``BaseNode``.
        timeout: seconds one attempt may take; a late attempt fails with
            ``TimeoutError`` (and is retried while attempts remain).
        progress: the engine's ``progress`` option for the ``exec`` calls
            (True for a bar or log lines, or a callback); useful on batches.

    Raises:
        InvalidOptionError: ``max_retries`` < 1 or ``wait`` < 0 (a bad ``timeout``
            is reported by the engine when the node runs).
    """

    def __init__(self, max_retries: int = 1, wait: float = 0.0, node_id: str | None = None, *,
                 timeout: float | None = None, progress: Any = False) -> None:
        super().__init__(node_id)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise InvalidOptionError(
                f"max_retries counts attempts and must be an int >= 1, got {max_retries!r}"
            )
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise InvalidOptionError(f"wait must be a number of seconds >= 0, got {wait!r}")
        self.max_retries = max_retries
        self.wait = float(wait)
        self.timeout = timeout
        self.progress = progress

    # -- the steps a subclass overrides ----------------------------------------------
    def prep(self, shared: Any) -> Any:
        """Read the input of ``exec`` from ``shared``."""
        return None

    def exec(self, prep_res: Any) -> Any:
        """Do the work. Keep it free of ``shared``: it may run in another thread or process."""
        return None

    def exec_fallback(self, prep_res: Any, exc: BaseException) -> Any:
        """Called once ``exec`` failed on every attempt; its return replaces the result.

        Raises:
            BaseException: by default ``exc`` itself, which stops the node.
        """
        raise exc

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str | None:
        """Write results to ``shared``; return the next action (None = "default")."""
        return None

    # -- running ---------------------------------------------------------------------
    def _run(self, shared: Any) -> str | None:
        start = time.perf_counter()
        failed = True
        try:
            prep_res = self.prep(shared)
            action = self.post(shared, prep_res, self._execute(prep_res))
            failed = False
            return action
        finally:
            self._observe_run(time.perf_counter() - start, failed)

    def engine_options(self) -> dict[str, Any]:
        """The options this node passes to ``shoal.imap`` for its ``exec`` calls."""
        policy = RetryPolicy(retries=self.max_retries - 1, backoff=self.wait, factor=1.0,
                             max_delay=max(self.wait, 1.0), jitter=0.0)
        # One item per engine task: a failure whose fallback raises stops the
        # node before any later item starts (chunks would run ahead).
        return {"backend": "sequential", "retries": policy, "timeout": self.timeout,
                "chunk_size": 1, "progress": self.progress}

    def _execute(self, prep_res: Any) -> Any:
        return self._settle([prep_res])[0]

    def _settle(self, items: Iterable[Any]) -> list[Any]:
        """Run ``exec`` on every item through the engine; failures go to the fallback."""
        values: list[Any] = []
        results = _imap(self.exec, items, self.engine_options())
        try:
            for r in results:
                self._observe_result(r)
                values.append(r.value if r.ok else self.exec_fallback(r.item, _error(r)))
        finally:
            _close(results)  # a raising fallback stops the engine now, not at GC
        return values

    # -- hooks for MetricsNode; called on the thread that runs the node ---------------
    def _observe_result(self, result: ItemResult[Any]) -> None:
        """One settled ``exec`` call (after its last attempt)."""

    def _observe_run(self, seconds: float, failed: bool) -> None:
        """One whole node run (prep, exec, post)."""


class BatchNode(Node):
    """``prep`` returns an iterable; ``exec`` runs once per element, one after another.

    ``exec_res`` is the list of results in input order; each element has its
    own retries and its own fallback. A ``prep`` returning None gives ``[]``.
    """

    def _execute(self, prep_res: Any) -> Any:
        return [] if prep_res is None else self._settle(prep_res)


class ParallelBatchNode(BatchNode):
    """``BatchNode`` whose elements run on ``max_workers`` engine workers.

    Args:
        max_workers: concurrent ``exec`` calls, KayGraph's first positional
            argument (None: the backend's default).
        *args, **kwargs: ``Node``'s arguments (``max_retries``, ``wait``,
            ``node_id``, ...), passed on along the class's bases as KayGraph does.
        backend: an engine backend: ``"threads"`` (default), ``"processes"``
            (``exec`` and the node must pickle), ``"asyncio"``, ``"auto"``...

    Raises:
        InvalidOptionError: as ``Node``; a bad ``max_workers`` or backend is
            reported by the engine when the node runs.
    """

    def __init__(self, max_workers: int | None = None, *args: Any, backend: str = "threads",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_workers = max_workers
        self.backend = backend

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "backend": self.backend, "workers": self.max_workers,
                "chunk_size": "auto"}


class AsyncNode(Node):
    """A node of coroutines: ``prep_async``, ``exec_async``, ``post_async``.

    Run it with ``await node.run_async(shared)``; ``node.run(shared)`` works
    too, on an event loop of its own. ``exec_async`` runs on the engine's
    asyncio backend, so a timeout cancels the coroutine for real.
    """

    async def prep_async(self, shared: Any) -> Any:
        """Async ``prep``."""
        return None

    async def exec_async(self, prep_res: Any) -> Any:
        """Async ``exec``."""
        return None

    async def exec_fallback_async(self, prep_res: Any, exc: BaseException) -> Any:
        """Async ``exec_fallback``.

        Raises:
            BaseException: by default ``exc`` itself, which stops the node.
        """
        raise exc

    async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> str | None:
        """Async ``post``."""
        return None

    def _run(self, shared: Any) -> str | None:
        return arun(self._run_async(shared))

    async def _run_async(self, shared: Any) -> str | None:
        start = time.perf_counter()
        failed = True
        try:
            prep_res = await self.prep_async(shared)
            exec_res = await self._execute_async(prep_res)
            action = await self.post_async(shared, prep_res, exec_res)
            failed = False
            return action
        finally:
            self._observe_run(time.perf_counter() - start, failed)

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "backend": "asyncio", "workers": 1}

    async def _execute_async(self, prep_res: Any) -> Any:
        return (await self._settle_async([prep_res]))[0]

    async def _settle_async(self, items: Iterable[Any]) -> list[Any]:
        values: list[Any] = []
        results: AsyncIterator[ItemResult[Any]] = shoal.aimap(
            self.exec_async, items, **self.engine_options()
        )
        async with aclosing(results):  # type: ignore[type-var]
            async for r in results:
                self._observe_result(r)
                if r.ok:
                    values.append(r.value)
                else:
                    values.append(await self.exec_fallback_async(r.item, _error(r)))
        return values


class AsyncBatchNode(AsyncNode):
    """``prep_async`` returns an iterable; ``exec_async`` runs per element, one at a time."""

    async def _execute_async(self, prep_res: Any) -> Any:
        return [] if prep_res is None else await self._settle_async(prep_res)


class AsyncParallelBatchNode(AsyncBatchNode):
    """``AsyncBatchNode`` whose elements run concurrently on the event loop.

    Args:
        *args, **kwargs: ``Node``'s arguments.
        max_concurrency: at most this many coroutines at once (KayGraph has
            no cap; None here means the asyncio backend's default, 100).

    Raises:
        InvalidOptionError: as ``Node``; a bad ``max_concurrency`` is reported
            by the engine when the node runs.
    """

    def __init__(self, *args: Any, max_concurrency: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_concurrency = max_concurrency

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "workers": self.max_concurrency}


class MetricsNode(Node):
    """KayGraph's metrics mixin: times and retries of each run; ``get_stats()``.

    ``class Fetch(ParallelBatchNode, MetricsNode)`` or ``(MetricsNode,
    ParallelBatchNode)``: ``collect_metrics`` is the first positional argument
    of ``MetricsNode.__init__``, the rest goes on along the bases, as in KayGraph.
    ``self.metrics`` holds KayGraph's lists and counts; the dict is shared by
    the copies a graph runs, so the node's stats include its graph runs.

    Args:
        collect_metrics: False records nothing (``get_stats`` stays at
            ``{"status": "no_executions"}``).
    """

    def __init__(self, collect_metrics: bool = True, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collect_metrics = collect_metrics
        self.metrics: dict[str, Any] = {
            "execution_times": [], "retry_counts": [], "success_count": 0, "error_count": 0,
        }
        self._run_retries = 0

    def _observe_result(self, result: ItemResult[Any]) -> None:
        super()._observe_result(result)
        self._run_retries += result.attempts - 1

    def _observe_run(self, seconds: float, failed: bool) -> None:
        super()._observe_run(seconds, failed)
        retries, self._run_retries = self._run_retries, 0
        if not self.collect_metrics:
            return
        m = self.metrics
        m["execution_times"].append(seconds)
        m["retry_counts"].append(retries)
        m["error_count" if failed else "success_count"] += 1

    def get_stats(self) -> dict[str, Any]:
        """KayGraph's statistics over the node's runs.

        ``{"status": "no_executions"}`` before any run; then
        ``total_executions``, ``success_rate`` (runs that did not raise),
        ``avg_execution_time``, ``min_execution_time``, ``max_execution_time``
        (seconds of whole runs: prep, exec, post) and ``total_retries`` (every
        extra attempt of every ``exec`` call; KayGraph counts only the last
        call's of a batch run).
        """
        times: list[float] = self.metrics["execution_times"]
        if not times:
            return {"status": "no_executions"}
        return {
            "total_executions": len(times),
            "success_rate": self.metrics["success_count"] / len(times),
            "avg_execution_time": sum(times) / len(times),
            "min_execution_time": min(times),
            "max_execution_time": max(times),
            "total_retries": sum(self.metrics["retry_counts"]),
        }


def _error(result: ItemResult[Any]) -> BaseException:
    # A failed result always carries its exception; the engine guarantees it.
    assert result.error is not None
    return result.error


# The pools of the graph run going on in this context (see ``graph_pools``):
# its batch nodes' calls share workers, keyed by the workers' own options.
_POOLS: ContextVar[dict[tuple[Any, ...], shoal.Pool] | None] = ContextVar(
    "shoal_graph_pools", default=None)
_POOL_KEYS = ("backend", "workers")


@contextmanager
def graph_pools() -> Iterator[None]:
    """Within a graph run, nodes that run on the same backend with the same
    workers share one ``shoal.Pool``: workers start once per graph run, not
    once per node (KayGraph starts a ThreadPoolExecutor per node). The
    outermost graph run closes them; a nested graph run uses its parent's."""
    if _POOLS.get() is not None:
        yield
        return
    pools: dict[tuple[Any, ...], shoal.Pool] = {}
    token = _POOLS.set(pools)
    try:
        yield
    finally:
        _POOLS.reset(token)
        for pool in pools.values():
            pool.close()


def _imap(fn: Any, items: Iterable[Any], options: dict[str, Any]) -> Iterator[ItemResult[Any]]:
    """``shoal.imap``, on the graph run's pool for these workers when there is one."""
    pools = _POOLS.get()
    if pools is None:
        return shoal.imap(fn, items, **options)
    own = {k: options.pop(k) for k in _POOL_KEYS if k in options}
    key = tuple(own.get(k) for k in _POOL_KEYS)
    pool = pools.get(key)
    if pool is None:
        pool = pools[key] = shoal.Pool(**own)
    return pool.imap(fn, items, **options)


def _close(results: Iterator[Any]) -> None:
    close = getattr(results, "close", None)
    if close is not None:
        close()
