"""Nodes and graphs: the prep / exec / post front-end, as a thin layer over the engine.

A node does its work in three steps::

    prep(shared) -> prep_res          read what it needs from the shared dict
    exec(prep_res) -> exec_res        the work itself; retried, may fall back
    post(shared, prep_res, exec_res)  write results back, return an action

and a ``Graph`` follows the actions from node to node::

    load >> split >> work
    work - "retry" >> split           # a named action
    Graph(start=load).run(shared)

Nodes never own pools, retry loops or timers. Every call of ``exec`` (one per
node run, or one per element of a batch) goes through the engine
(``shoal.imap`` / ``shoal.aimap``), so retries, timeouts, worker limits and
progress are the engine's, and retry state lives in each item's own result,
never in the node: a node shared by many threads has nothing to race on.
``exec_fallback`` runs on the calling thread once an item has used all its
attempts; if it raises, the node stops and the exception propagates (the
batch is all-or-nothing unless the fallback returns a value).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import shoal
from shoal._core.bridge import arun
from shoal._core.errors import InvalidOptionError
from shoal._core.results import ItemResult
from shoal._policies.retry import RetryPolicy

__all__ = [
    "AsyncBatchNode",
    "AsyncNode",
    "AsyncParallelBatchNode",
    "BaseNode",
    "BatchNode",
    "Graph",
    "MetricsNode",
    "Node",
    "ParallelBatchNode",
]

N = TypeVar("N", bound="BaseNode")
DEFAULT_ACTION = "default"


class BaseNode:
    """Something a ``Graph`` can run: ``run(shared)`` returns the next action.

    Successors are wired with ``a >> b`` (the default action) and
    ``a - "action" >> b``; both return ``b`` so chains read left to right.
    """

    def __init__(self) -> None:
        self.successors: dict[str, BaseNode] = {}

    def next(self, node: N, action: str = DEFAULT_ACTION) -> N:
        """Run ``node`` after this one when ``run`` returns ``action``; return ``node``.

        Raises:
            TypeError: ``node`` is not a node or ``action`` is not a string.
        """
        if not isinstance(node, BaseNode):
            raise TypeError(f"a successor must be a node, got {type(node).__name__}")
        if not isinstance(action, str):
            raise TypeError(f"an action must be a string, got {action!r}")
        if action in self.successors and self.successors[action] is not node:
            warnings.warn(f"{self!r}: replacing the successor for action {action!r}", stacklevel=3)
        self.successors[action] = node
        return node

    def __rshift__(self, node: N) -> N:
        return self.next(node)

    def __sub__(self, action: str) -> _Transition:
        if not isinstance(action, str):
            return NotImplemented
        return _Transition(self, action)

    def run(self, shared: Any) -> str | None:
        """Run the node once on ``shared``; return the action (None means "default")."""
        raise NotImplementedError

    async def run_async(self, shared: Any) -> str | None:
        """Run from a coroutine. A synchronous node runs inline on the loop's thread."""
        return self.run(shared)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


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
        max_retries: attempts of ``exec`` per call (1 = no retry), as in the seed.
        wait: seconds between two attempts (constant, no jitter).
        timeout: seconds one attempt may take; a late attempt fails with
            ``TimeoutError`` (and is retried while attempts remain).

    Raises:
        InvalidOptionError: ``max_retries`` < 1 or ``wait`` < 0 (a bad ``timeout``
            is reported by the engine when the node runs).
    """

    def __init__(self, max_retries: int = 1, wait: float = 0.0, *,
                 timeout: float | None = None) -> None:
        super().__init__()
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise InvalidOptionError(
                f"max_retries counts attempts and must be an int >= 1, got {max_retries!r}"
            )
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise InvalidOptionError(f"wait must be a number of seconds >= 0, got {wait!r}")
        self.max_retries = max_retries
        self.wait = float(wait)
        self.timeout = timeout

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
    def run(self, shared: Any) -> str | None:
        """``prep``, ``exec`` through the engine (with retries), then ``post``.

        Raises:
            BaseException: whatever ``prep``, ``post`` or ``exec_fallback`` raise.
        """
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
                "chunk_size": 1}

    def _execute(self, prep_res: Any) -> Any:
        return self._settle([prep_res])[0]

    def _settle(self, items: Iterable[Any]) -> list[Any]:
        """Run ``exec`` on every item through the engine; failures go to the fallback."""
        values: list[Any] = []
        results = shoal.imap(self.exec, items, **self.engine_options())
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
    own retries and its own fallback. ``progress`` is the engine's option
    (True for a bar or log lines, or a callback).
    """

    def __init__(self, max_retries: int = 1, wait: float = 0.0, *,
                 timeout: float | None = None, progress: Any = False) -> None:
        super().__init__(max_retries, wait, timeout=timeout)
        self.progress = progress

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "progress": self.progress}

    def _execute(self, prep_res: Any) -> Any:
        return [] if prep_res is None else self._settle(prep_res)


class ParallelBatchNode(BatchNode):
    """``BatchNode`` whose elements run on ``max_workers`` engine workers.

    Args:
        max_workers: concurrent ``exec`` calls (None: the backend's default).
        backend: an engine backend: ``"threads"`` (default), ``"processes"``
            (``exec`` and the node must pickle), ``"asyncio"``, ``"auto"``...

    Raises:
        InvalidOptionError: as ``Node``; a bad ``max_workers`` or backend is
            reported by the engine when the node runs.
    """

    def __init__(self, max_retries: int = 1, wait: float = 0.0, *,
                 max_workers: int | None = None, backend: str = "threads",
                 timeout: float | None = None, progress: Any = False) -> None:
        super().__init__(max_retries, wait, timeout=timeout, progress=progress)
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

    def run(self, shared: Any) -> str | None:
        """Run ``run_async`` to completion from synchronous code.

        Raises:
            BaseException: whatever the steps raise.
        """
        return arun(self.run_async(shared))

    async def run_async(self, shared: Any) -> str | None:
        """``prep_async``, ``exec_async`` through the engine, then ``post_async``.

        Raises:
            BaseException: whatever the steps or ``exec_fallback_async`` raise.
        """
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

    def __init__(self, max_retries: int = 1, wait: float = 0.0, *,
                 timeout: float | None = None, progress: Any = False) -> None:
        super().__init__(max_retries, wait, timeout=timeout)
        self.progress = progress

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "progress": self.progress}

    async def _execute_async(self, prep_res: Any) -> Any:
        return [] if prep_res is None else await self._settle_async(prep_res)


class AsyncParallelBatchNode(AsyncBatchNode):
    """``AsyncBatchNode`` with at most ``max_concurrency`` coroutines running at once.

    Raises:
        InvalidOptionError: as ``Node``; a bad ``max_concurrency`` is reported
            by the engine when the node runs.
    """

    def __init__(self, max_retries: int = 1, wait: float = 0.0, *,
                 max_concurrency: int | None = None, timeout: float | None = None,
                 progress: Any = False) -> None:
        super().__init__(max_retries, wait, timeout=timeout, progress=progress)
        self.max_concurrency = max_concurrency

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "workers": self.max_concurrency}


class MetricsNode(Node):
    """Mixin recording how a node's ``exec`` calls went; put it first in the bases.

    ``class Fetch(MetricsNode, ParallelBatchNode): ...``. The numbers come from
    the engine's per-item results (attempts, duration of the last attempt), so
    they are right for any backend, processes included, and need no lock: the
    hooks run on the thread that runs the node.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget everything recorded so far."""
        self._exec_times: list[float] = []
        self._retries = 0
        self._succeeded = 0
        self._errors = 0
        self._runs = 0
        self._failed_runs = 0
        self._run_time = 0.0

    def _observe_result(self, result: ItemResult[Any]) -> None:
        super()._observe_result(result)
        if not result.restored:
            self._exec_times.append(result.duration)
        self._retries += result.attempts - 1
        if result.ok:
            self._succeeded += 1
        else:
            self._errors += 1

    def _observe_run(self, seconds: float, failed: bool) -> None:
        super()._observe_run(seconds, failed)
        self._runs += 1
        self._failed_runs += failed
        self._run_time += seconds

    def get_stats(self) -> dict[str, Any]:
        """Counts and times so far.

        Keys: ``runs``, ``failed_runs``, ``run_time`` (s, whole node runs),
        ``exec_calls``, ``succeeded``, ``errors`` (calls that failed every
        attempt, whether or not the fallback saved them), ``retries`` (extra
        attempts), ``success_rate``, and ``exec_time_total/mean/min/max``
        (seconds of the last attempt of each call; 0.0 when none ran).
        """
        times = self._exec_times
        calls = self._succeeded + self._errors
        return {
            "runs": self._runs,
            "failed_runs": self._failed_runs,
            "run_time": self._run_time,
            "exec_calls": calls,
            "succeeded": self._succeeded,
            "errors": self._errors,
            "retries": self._retries,
            "success_rate": self._succeeded / calls if calls else 0.0,
            "exec_time_total": sum(times),
            "exec_time_mean": sum(times) / len(times) if times else 0.0,
            "exec_time_min": min(times, default=0.0),
            "exec_time_max": max(times, default=0.0),
        }


class Graph(BaseNode):
    """Runs nodes from ``start``, following the action each one returns.

    The run ends at a node with no successor for its action; a warning says
    so when the action was named and the node has successors for other
    actions (likely a typo). Returning None with no default successor ends
    the run quietly. A graph
    is itself a node, so graphs nest; ``run`` returns the last node's action.

    Args:
        start: the first node.
        max_steps: stop with ``RuntimeError`` after this many node runs (a
            guard for graphs with cycles); None for no limit.

    Raises:
        TypeError: ``start`` is not a node.
    """

    def __init__(self, start: BaseNode, *, max_steps: int | None = None) -> None:
        super().__init__()
        if not isinstance(start, BaseNode):
            raise TypeError(f"start must be a node, got {type(start).__name__}")
        self.start = start
        self.max_steps = max_steps

    def _after(self, node: BaseNode, action: str | None, steps: int) -> BaseNode | None:
        """The node to run after ``node`` returned ``action`` (None: the run ends)."""
        key = action or DEFAULT_ACTION
        nxt = node.successors.get(key)
        if nxt is None and action is not None and node.successors:
            warnings.warn(
                f"graph ends at {node!r}: no successor for action {key!r} "
                f"(it has {sorted(node.successors)})", stacklevel=3,
            )
        if nxt is not None and self.max_steps is not None and steps >= self.max_steps:
            raise RuntimeError(
                f"graph stopped after max_steps={self.max_steps} node runs "
                f"(next: {nxt!r}); raise max_steps or check the graph for a cycle"
            )
        return nxt

    def run(self, shared: Any) -> str | None:
        """Run the graph on ``shared``; async nodes run on a loop of their own.

        Raises:
            RuntimeError: more than ``max_steps`` node runs.
            BaseException: whatever a node raises (the graph stops there).
        """
        node: BaseNode | None = self.start
        action: str | None = None
        steps = 0
        while node is not None:
            action = node.run(shared)
            steps += 1
            node = self._after(node, action, steps)
        return action

    async def run_async(self, shared: Any) -> str | None:
        """Run the graph from a coroutine; synchronous nodes run inline.

        Raises:
            RuntimeError: more than ``max_steps`` node runs.
            BaseException: whatever a node raises (the graph stops there).
        """
        node: BaseNode | None = self.start
        action: str | None = None
        steps = 0
        while node is not None:
            action = await node.run_async(shared)
            steps += 1
            node = self._after(node, action, steps)
        return action


def _error(result: ItemResult[Any]) -> BaseException:
    return result.error if result.error is not None else RuntimeError("item failed")


def _close(results: Iterator[Any]) -> None:
    close = getattr(results, "close", None)
    if close is not None:
        close()
