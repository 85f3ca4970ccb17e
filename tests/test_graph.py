"""Nodes and graphs (shoal.graph) on the engine: steps, retries, fallbacks, caps, metrics.

KayGraph's own API (Graph().start, params, warnings, get_stats keys...) is pinned
in test_graph_kaygraph.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from typing import Any

import pytest

import shoal
from shoal import InvalidOptionError
from shoal.graph import (
    AsyncBatchNode,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    Graph,
    GraphError,
    InvalidGraphError,
    MetricsNode,
    Node,
    ParallelBatchNode,
)

# --- helpers --------------------------------------------------------------------------


class Flaky:
    """Fails the first ``failures`` calls per item, counting calls per item under a lock."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[Any, int] = {}
        self.lock = threading.Lock()

    def __call__(self, item: Any) -> Any:
        with self.lock:
            n = self.calls[item] = self.calls.get(item, 0) + 1
        if n <= self.failures:
            raise ValueError(f"attempt {n} of {item!r}")
        return item * 10


class Concurrency:
    """Counts simultaneous calls; the first ``cap`` callers wait until ``cap`` are inside.

    Reaching ``cap`` proves the cap is usable; ``peak`` > cap would prove it is not
    honoured. No sleeps: an Event releases everybody once ``cap`` calls overlap.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.full = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.cap:
                self.full.set()

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


# --- Node -----------------------------------------------------------------------------


class Double(Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return int(shared["x"])

    def exec(self, prep_res: int) -> int:
        return prep_res * 2

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str | None:
        shared["y"] = exec_res
        return None


def test_node_runs_prep_exec_post() -> None:
    shared = {"x": 21}
    assert Double().run(shared) is None
    assert shared["y"] == 42


class FlakyNode(Node):
    def __init__(self, fn: Flaky, **kw: Any) -> None:
        super().__init__(**kw)
        self.fn = fn

    def prep(self, shared: dict[str, Any]) -> int:
        return 4

    def exec(self, prep_res: int) -> int:
        return int(self.fn(prep_res))

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["out"] = exec_res
        return "done"


def test_node_retries_until_success() -> None:
    fn = Flaky(failures=2)
    shared: dict[str, Any] = {}
    assert FlakyNode(fn, max_retries=3).run(shared) == "done"
    assert shared["out"] == 40 and fn.calls == {4: 3}


def test_node_out_of_retries_raises_the_exec_error() -> None:
    fn = Flaky(failures=5)
    with pytest.raises(ValueError, match="attempt 2 of 4"):
        FlakyNode(fn, max_retries=2).run({})
    assert fn.calls == {4: 2}


def test_node_fallback_replaces_the_result() -> None:
    seen: list[BaseException] = []

    class Fallback(FlakyNode):
        def exec_fallback(self, prep_res: Any, exc: BaseException) -> int:
            seen.append(exc)
            return -int(prep_res)

    shared: dict[str, Any] = {}
    Fallback(Flaky(failures=9), max_retries=2).run(shared)
    assert shared["out"] == -4
    assert [type(e) for e in seen] == [ValueError]


def test_node_wait_is_passed_to_the_engine_policy() -> None:
    policy = Node(max_retries=3, wait=0.25).engine_options()["retries"]
    assert policy.max_attempts == 3
    assert [policy.delay(k) for k in (1, 2)] == [0.25, 0.25]


@pytest.mark.parametrize("kw", [{"max_retries": 0}, {"max_retries": 1.5}, {"wait": -1}])
def test_node_rejects_bad_settings(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        Node(**kw)


def test_node_timeout_fails_a_hung_exec() -> None:
    release = threading.Event()

    class Hang(Node):
        def exec(self, prep_res: Any) -> None:
            release.wait(10)

        def exec_fallback(self, prep_res: Any, exc: BaseException) -> str:
            return type(exc).__name__

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
            shared["r"] = exec_res

    shared: dict[str, Any] = {}
    try:
        Hang(timeout=0.05).run(shared)
    finally:
        release.set()
    assert shared["r"] == "TimeoutError"


# --- batch nodes ----------------------------------------------------------------------


class Times10(BatchNode):
    def __init__(self, fn: Flaky, **kw: Any) -> None:
        super().__init__(**kw)
        self.fn = fn

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(shared["items"])

    def exec(self, item: int) -> int:
        return int(self.fn(item))

    def exec_fallback(self, item: int, exc: BaseException) -> int:
        return -1

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


class ParallelTimes10(Times10, ParallelBatchNode):
    pass


def test_batch_node_retries_each_item_on_its_own() -> None:
    fn = Flaky(failures=1)
    shared: dict[str, Any] = {"items": range(5)}
    Times10(fn, max_retries=2).run(shared)
    assert shared["out"] == [0, 10, 20, 30, 40]
    assert fn.calls == dict.fromkeys(range(5), 2)


def test_batch_node_fallback_per_item() -> None:
    shared: dict[str, Any] = {"items": [1, 2]}
    Times10(Flaky(failures=1), max_retries=1).run(shared)
    assert shared["out"] == [-1, -1]


def test_batch_node_raising_fallback_stops_the_batch() -> None:
    fn = Flaky(failures=0)

    class Strict(Times10):
        def exec(self, item: int) -> int:
            if item == 2:
                raise KeyError(item)
            return int(self.fn(item))

        def exec_fallback(self, item: int, exc: BaseException) -> int:
            raise exc

    with pytest.raises(KeyError):
        Strict(fn).run({"items": range(10)})
    assert sorted(fn.calls) == [0, 1]  # sequential: nothing after the failure ran


def test_batch_node_with_none_from_prep_gives_empty_list() -> None:
    class Empty(Times10):
        def prep(self, shared: dict[str, Any]) -> Any:
            return None

    shared: dict[str, Any] = {}
    Empty(Flaky(0)).run(shared)
    assert shared["out"] == []


def test_parallel_batch_node_keeps_input_order_and_per_item_retries() -> None:
    # The seed kept one retry counter on the node, shared by every thread; here
    # each item's attempts are its own: every item fails once, then succeeds.
    fn = Flaky(failures=1)
    shared: dict[str, Any] = {"items": range(40)}
    ParallelTimes10(fn, max_retries=2, max_workers=4).run(shared)
    assert shared["out"] == [i * 10 for i in range(40)]
    assert fn.calls == dict.fromkeys(range(40), 2)


@pytest.mark.parametrize("cap", [1, 3])
def test_parallel_batch_node_honours_max_workers(cap: int) -> None:
    conc = Concurrency(cap)

    class Gate(ParallelBatchNode):
        def prep(self, shared: Any) -> range:
            return range(4 * cap)

        def exec(self, item: int) -> int:
            conc.enter()
            try:
                assert conc.full.wait(10), "fewer workers than max_workers ran at once"
                return item
            finally:
                conc.leave()

    Gate(max_workers=cap).run({})
    assert conc.peak == cap


@pytest.mark.skipif(importlib.util.find_spec("shoal._backends._processes.pool") is None,
                    reason="no processes backend in this build")
def test_parallel_batch_node_on_processes_with_metrics() -> None:
    class Square(MetricsNode, ParallelBatchNode):
        def prep(self, shared: Any) -> range:
            return range(8)

        def exec(self, item: int) -> tuple[int, int]:
            if item == 5:
                raise ValueError("five")
            return item * item, os.getpid()

        def exec_fallback(self, item: int, exc: BaseException) -> tuple[int, int]:
            return -1, os.getpid()

        def post(self, shared: dict[str, Any], p: Any, res: list[tuple[int, int]]) -> None:
            shared["out"] = res

    node = Square(max_workers=2, backend="processes")
    shared: dict[str, Any] = {}
    node.run(shared)
    assert [v for v, _ in shared["out"]] == [0, 1, 4, 9, 16, -1, 36, 49]
    worker_pids = {pid for k, (_, pid) in enumerate(shared["out"]) if k != 5}
    assert os.getpid() not in worker_pids  # exec ran in worker processes
    assert shared["out"][5][1] == os.getpid()  # the fallback runs in the caller
    assert node.get_stats()["total_executions"] == 1 and node.metrics["success_count"] == 1


# --- async nodes ----------------------------------------------------------------------


class AsyncDouble(AsyncNode):
    async def prep_async(self, shared: dict[str, Any]) -> int:
        return int(shared["x"])

    async def exec_async(self, prep_res: int) -> int:
        await asyncio.sleep(0)
        return prep_res * 2

    async def post_async(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["y"] = exec_res
        return "next"


def test_async_node_run_async_and_sync_run() -> None:
    shared = {"x": 5}
    assert asyncio.run(AsyncDouble().run_async(shared)) == "next"
    assert shared["y"] == 10
    shared = {"x": 6}
    assert AsyncDouble().run(shared) == "next"
    assert shared["y"] == 12


def test_async_batch_node_retries_and_falls_back() -> None:
    fn = Flaky(failures=1)

    class Items(AsyncBatchNode):
        async def prep_async(self, shared: Any) -> list[int]:
            return [1, 2, 3]

        async def exec_async(self, item: int) -> int:
            if item == 3:
                raise ValueError("never")
            return int(fn(item))

        async def exec_fallback_async(self, item: int, exc: BaseException) -> int:
            return 0

        async def post_async(self, shared: dict[str, Any], p: Any, res: list[int]) -> None:
            shared["out"] = res

    shared: dict[str, Any] = {}
    asyncio.run(Items(max_retries=2).run_async(shared))
    assert shared["out"] == [10, 20, 0]
    assert fn.calls == {1: 2, 2: 2}


@pytest.mark.parametrize("cap", [1, 4])
def test_async_parallel_batch_node_honours_max_concurrency(cap: int) -> None:
    active = peak = 0
    full = asyncio.Event()

    class Gate(AsyncParallelBatchNode):
        async def prep_async(self, shared: Any) -> range:
            return range(5 * cap)

        async def exec_async(self, item: int) -> int:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            if active >= cap:
                full.set()
            try:
                await asyncio.wait_for(full.wait(), 10)
                return item
            finally:
                active -= 1

        async def post_async(self, shared: dict[str, Any], p: Any, res: list[int]) -> None:
            shared["out"] = res

    shared: dict[str, Any] = {}
    asyncio.run(Gate(max_concurrency=cap).run_async(shared))
    assert shared["out"] == list(range(5 * cap))
    assert peak == cap


# --- metrics --------------------------------------------------------------------------


def test_metrics_node_counts_runs_retries_and_failed_runs() -> None:
    class Measured(MetricsNode, ParallelTimes10):
        pass

    node = Measured(True, Flaky(failures=1), max_retries=2, max_workers=2)
    node.run({"items": range(6)})  # every item fails once, then succeeds
    stats = node.get_stats()
    assert (stats["total_executions"], stats["success_rate"], stats["total_retries"]) == (1, 1, 6)
    assert 0 < stats["min_execution_time"] == stats["avg_execution_time"]

    class Strict(Measured):
        def exec_fallback(self, item: int, exc: BaseException) -> int:
            raise exc

    strict = Strict(True, Flaky(failures=5), max_retries=2, max_workers=2)
    with pytest.raises(ValueError):
        strict.run({"items": [1]})
    stats = strict.get_stats()
    assert (stats["total_executions"], stats["success_rate"], stats["total_retries"]) == (1, 0, 1)


def test_metrics_node_counts_failed_runs_of_async_nodes() -> None:
    class Boom(MetricsNode, AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            raise OSError("down")

    node = Boom(max_retries=3)
    with pytest.raises(OSError):
        node.run({})
    assert node.metrics["error_count"] == 1 and node.metrics["retry_counts"] == [2]
    assert node.get_stats()["success_rate"] == 0


# --- graphs ---------------------------------------------------------------------------


class Step(Node):
    def __init__(self, name: str, action: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.action = action

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str | None:
        shared.setdefault("trail", []).append(self.name)
        return self.action


def test_graph_follows_default_and_named_actions() -> None:
    a, b, c, d = Step("a", "left"), Step("b"), Step("c"), Step("d")
    assert (a - "left" >> b) is b
    a - "right" >> c
    assert (b >> d) is d
    shared: dict[str, Any] = {}
    assert Graph(start=a).run(shared) is None
    assert shared["trail"] == ["a", "b", "d"]


def test_graph_warns_on_an_unknown_action() -> None:
    a, b = Step("a", "nowhere"), Step("b")
    a >> b
    shared: dict[str, Any] = {}
    with pytest.warns(UserWarning, match=r"Graph ends: 'nowhere' not found in \['default'\]"):
        assert Graph(start=a).run(shared) == "nowhere"
    assert shared["trail"] == ["a"]


def test_graph_loops_and_max_steps() -> None:
    class Count(Node):
        def post(self, shared: dict[str, int], prep_res: Any, exec_res: Any) -> str | None:
            shared["n"] += 1
            return "again" if shared["n"] < 5 else None

    node = Count()
    node - "again" >> node
    shared = {"n": 0}
    with pytest.warns(UserWarning, match="Graph ends: 'None' not found in"):
        Graph(start=node).run(shared)  # KayGraph warns: None is "default", not wired
    assert shared["n"] == 5
    shared = {"n": 0}
    with pytest.warns(UserWarning):
        Graph(start=node, max_steps=5).run(shared)  # exactly enough
    with pytest.raises(GraphError, match="max_steps=3"):
        Graph(start=node, max_steps=3).run({"n": 0})


def test_graphs_nest_and_run_async_mixes_sync_and_async_nodes() -> None:
    inner = Graph(start=Step("i1"))
    assert inner.start_node is not None
    inner.start_node >> Step("i2")
    first = AsyncDouble()
    first - "next" >> inner
    inner >> Step("last")
    shared: dict[str, Any] = {"x": 1}
    asyncio.run(Graph(start=first).run_async(shared))
    assert shared["y"] == 2 and shared["trail"] == ["i1", "i2", "last"]
    shared = {"x": 2}
    Graph(start=first).run(shared)  # the async node gets its own loop
    assert shared["y"] == 4 and shared["trail"] == ["i1", "i2", "last"]


def test_wiring_errors() -> None:
    with pytest.raises(InvalidGraphError, match="a successor must be a node, got int"):
        Node() >> 3  # type: ignore[type-var]
    with pytest.raises(TypeError):
        Node() - 3  # type: ignore[operator]
    with pytest.raises(InvalidGraphError, match="start must be a node, got str"):
        Graph(start="a")  # type: ignore[arg-type]
    with pytest.raises(InvalidGraphError, match="start must be a node"):
        Graph().start(None)  # type: ignore[type-var]
    with pytest.raises(InvalidGraphError, match="an action must be a string"):
        Node().next(Node(), 3)  # type: ignore[arg-type]
    assert issubclass(InvalidGraphError, shoal.ShoalError)


def test_batch_nodes_of_one_graph_run_share_their_workers() -> None:
    """Two ParallelBatchNode(2) of one graph run use one pool: the second
    node's items run on the first node's threads; none is left afterwards."""
    import threading

    class Names(ParallelBatchNode):
        def prep(self, shared: Any) -> Any:
            return range(8)

        def exec(self, item: int) -> str:
            return threading.current_thread().name

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
            shared.setdefault("names", []).append(set(exec_res))
            return None

    first, second = Names(2), Names(2)
    first >> second
    before = set(threading.enumerate())
    shared: dict[str, Any] = {}
    Graph(start=first).run(shared)
    one, two = shared["names"]
    # Threads are named shoal-<pool>-<n>: one pool served both nodes (without
    # it, each node's call made its own: shoal-1-*, then shoal-2-*).
    assert len({name.rsplit("-", 1)[0] for name in one | two}) == 1
    leftover = [t for t in set(threading.enumerate()) - before if t.name.startswith("shoal")]
    for t in leftover:
        t.join(5)
    assert not any(t.is_alive() for t in leftover)
