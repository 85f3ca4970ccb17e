"""shoal.graph behaves as KayGraph does, so KayGraph code runs with only its imports changed.

KayGraph behaviours pinned here (learned from KayGraph 0.3.x's source and its
tests of nodes, batch nodes, async parallel batch nodes, fallbacks and graphs):

* ``Graph()`` with no start node, then ``graph.start(node)`` returning the node
  (``graph.start(a) >> b``, ``graph.start(a).next(b)``); ``graph.start_node``;
* ``Node(max_retries, wait, node_id)``, ``node.node_id`` (default
  ``"<Class>_<id>"``), ``node.params`` / ``set_params`` (a copy; not a dict is a
  TypeError), ``node.logger`` named after the class;
* a graph runs a shallow copy of each node with the graph's params;
* ``ParallelBatchNode(2)``: two workers (max_workers is the first positional);
* ``MetricsNode(collect_metrics=True)`` / ``get_stats()`` with KayGraph's keys,
  ``{"status": "no_executions"}`` before any run, and the workbook's base
  orders ``(BatchNode, MetricsNode)`` and ``(ParallelBatchNode, MetricsNode)``;
* the warnings: ``Graph ends: '<action>' not found in [...]`` (``'None'`` for a
  post that returned None while only named successors exist), a node run alone
  that has successors, and overwriting a successor;
* fallbacks and retries counted as KayGraph's tests count them; a cycle that
  ends on a signal; ``AsyncGraph`` and ``AsyncParallelBatchNode``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from typing import Any

import pytest

from shoal.graph import (
    AsyncGraph,
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


class Set(Node):
    def __init__(self, value: int) -> None:
        super().__init__()
        self.value = value

    def prep(self, shared: dict[str, Any]) -> None:
        shared["current"] = self.value


class Add(Node):
    def __init__(self, value: int) -> None:
        super().__init__()
        self.value = value

    def prep(self, shared: dict[str, Any]) -> None:
        shared["current"] += self.value


class Sign(Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        return "positive" if shared["current"] >= 0 else "negative"


class Signal(Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        return "finished"


def run_recording(graph: Graph, shared: dict[str, Any]) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action = graph.run(shared)
    return action, [str(w.message) for w in caught]


# --- Graph() and graph.start(node) ------------------------------------------------------


def test_start_returns_the_node_so_chains_read_left_to_right() -> None:
    graph = Graph()
    assert graph.start_node is None
    first = Set(5)
    assert graph.start(first) is first and graph.start_node is first
    graph.start(first) >> Add(3) >> Add(-10)
    shared: dict[str, Any] = {}
    assert graph.run(shared) is None
    assert shared["current"] == -2


def test_start_then_next_chains_and_graph_start_keeps_working() -> None:
    graph = Graph()
    graph.start(Set(1)).next(Add(2)).next(Add(3))
    shared: dict[str, Any] = {}
    graph.run(shared)
    assert shared["current"] == 6
    first = Set(7)
    first >> Add(1)
    shared = {}
    Graph(start=first).run(shared)
    assert shared["current"] == 8


def test_a_graph_without_a_start_node_says_how_to_give_one() -> None:
    with pytest.raises(GraphError, match=r"no start node; pass Graph\(start=node\) or call"):
        Graph().run({})
    with pytest.raises(GraphError):
        asyncio.run(Graph().run_async({}))


def test_branches_and_a_cycle_that_ends_on_a_signal() -> None:
    graph = Graph()
    sign, minus3, end = Sign(), Add(-3), Signal()
    graph.start(Set(10)) >> sign
    sign - "positive" >> minus3
    sign - "negative" >> end
    minus3 >> sign
    shared: dict[str, Any] = {}
    assert graph.run(shared) == "finished"
    assert shared["current"] == -2  # 10, 7, 4, 1, -2


# --- node_id, params, logger -----------------------------------------------------------


def test_node_id_default_and_given() -> None:
    node = Node(node_id="load")
    assert node.node_id == "load" and "load" in repr(node)
    anonymous = Add(1)
    assert anonymous.node_id == f"Add_{id(anonymous)}"
    assert Node(2, 0.5, "n").node_id == "n"  # KayGraph's positional order
    assert Graph(node_id="g").node_id == "g"


def test_logger_is_named_after_the_class(caplog: pytest.LogCaptureFixture) -> None:
    class Loud(Node):
        def exec(self, prep_res: Any) -> None:
            self.logger.info("working")

    node = Loud()
    assert isinstance(node.logger, logging.Logger) and node.logger.name == "Loud"
    with caplog.at_level(logging.INFO, logger="Loud"):
        node.run({})
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("Loud", "working")]


def test_set_params_copies_and_refuses_what_is_not_a_dict() -> None:
    node = Node()
    assert node.params == {}
    params = {"max_workers": 8}
    node.set_params(params)
    params["max_workers"] = 1
    assert node.params == {"max_workers": 8}
    with pytest.raises(InvalidGraphError, match="params must be a dict, got list"):
        node.set_params([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # KayGraph's exception type, still
        node.set_params("a=1")  # type: ignore[arg-type]


class ReadParams(Node):
    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return dict(self.params)

    def post(self, shared: dict[str, Any], prep_res: dict[str, Any], exec_res: Any) -> None:
        shared.setdefault("seen", []).append(prep_res)


def test_a_graph_runs_copies_of_its_nodes_with_the_graph_params() -> None:
    node = ReadParams()
    node.set_params({"own": 1})
    shared: dict[str, Any] = {}
    node.run(shared)  # alone, a node uses its own params
    graph = Graph(start=node)
    graph.run(shared)  # in a graph, the graph's (here none), as in KayGraph
    graph.set_params({"user": "ann"})
    graph.run(shared)
    assert shared["seen"] == [{"own": 1}, {}, {"user": "ann"}]
    assert node.params == {"own": 1}  # the graph set params on its copy only


def test_nested_graphs_pass_their_params_down() -> None:
    inner = Graph(start=ReadParams())
    outer = Graph(start=inner)
    outer.set_params({"batch": 3})
    shared: dict[str, Any] = {}
    outer.run(shared)
    assert shared["seen"] == [{"batch": 3}]


# --- ParallelBatchNode(2) and the workbook's base classes ------------------------------


def test_parallel_batch_node_first_positional_is_max_workers() -> None:
    lock = threading.Lock()
    active = peak = 0
    both_in = threading.Event()

    class Pair(ParallelBatchNode):
        def prep(self, shared: Any) -> range:
            return range(6)

        def exec(self, item: int) -> int:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
                if active == 2:
                    both_in.set()
            try:
                assert both_in.wait(10), "two workers never ran at once"
                return item
            finally:
                with lock:
                    active -= 1

    node = Pair(2)
    assert (node.max_workers, node.max_retries) == (2, 1)
    node.run({})
    assert peak == 2
    assert ParallelBatchNode(4, 3, 0.5, "p").max_retries == 3


class Doubler(BatchNode, MetricsNode):
    """The workbook's SequentialProcessNode pattern: collect_metrics by keyword."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # the workbook's own line, kept as written: mypy (like B026) objects that
        # a positional argument in *args would also fill collect_metrics
        super().__init__(collect_metrics=True, *args, **kwargs)  # type: ignore[misc]  # noqa: B026

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return list(shared["items"])

    def exec(self, prep_res: int) -> int:  # named as Node.exec's: ParallelDoubler reuses it
        if prep_res < 0:
            raise ValueError(f"negative {prep_res}")
        return 2 * prep_res

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


class ParallelDoubler(ParallelBatchNode, MetricsNode):
    """The workbook's ParallelProcessNode pattern: max_workers and collect_metrics by keyword."""

    def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(max_workers=max_workers, collect_metrics=True, **kwargs)

    prep = Doubler.prep
    exec = Doubler.exec
    post = Doubler.post


def test_metrics_node_stats_have_kaygraphs_keys() -> None:
    node = Doubler(node_id="seq")
    assert node.get_stats() == {"status": "no_executions"}
    node.run({"items": [1, 2]})
    with pytest.raises(ValueError):
        node.run({"items": [1, -1]})
    stats = node.get_stats()
    assert sorted(stats) == ["avg_execution_time", "max_execution_time", "min_execution_time",
                             "success_rate", "total_executions", "total_retries"]
    assert (stats["total_executions"], stats["success_rate"], stats["total_retries"]) == (2, 0.5, 0)
    assert 0 < stats["min_execution_time"] <= stats["avg_execution_time"]
    assert stats["avg_execution_time"] <= stats["max_execution_time"]
    assert node.metrics["success_count"] == 1 and node.metrics["error_count"] == 1


def test_metrics_node_parallel_base_order_and_graph_runs_count() -> None:
    node = ParallelDoubler(max_workers=3, node_id="par", max_retries=2)
    assert (node.max_workers, node.max_retries, node.collect_metrics) == (3, 2, True)
    shared: dict[str, Any] = {"items": range(10)}
    Graph(start=node).run(shared)  # runs a copy; the stats are the node's all the same
    Graph(start=node).run(shared)
    assert shared["out"] == [2 * i for i in range(10)]
    assert node.get_stats()["total_executions"] == 2


def test_metrics_node_retries_and_collect_metrics_false() -> None:
    attempts: dict[int, int] = {}

    class Flaky(MetricsNode):
        def exec(self, prep_res: Any) -> str:
            attempts[0] = attempts.get(0, 0) + 1
            if attempts[0] < 3:
                raise OSError("again")
            return "ok"

    node = Flaky(True, 3)
    node.run({})
    assert node.get_stats()["total_retries"] == 2
    quiet = Flaky(collect_metrics=False, max_retries=5)
    attempts.clear()
    quiet.run({})
    assert quiet.get_stats() == {"status": "no_executions"}


# --- warnings, in KayGraph's words ------------------------------------------------------


def test_warning_when_post_returns_none_but_only_named_successors_exist() -> None:
    class Named(Node):
        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            return None

    start = Named()
    start - "specific_action" >> Node()
    graph = Graph()
    graph.start(start)
    action, messages = run_recording(graph, {})
    assert action is None
    assert messages == ["Graph ends: 'None' not found in ['specific_action']"]


def test_warning_when_a_named_action_has_no_successor() -> None:
    class Named(Node):
        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
            return "specific_action"

    start = Named()
    start >> Node()
    action, messages = run_recording(Graph(start=start), {})
    assert action == "specific_action"
    assert messages == ["Graph ends: 'specific_action' not found in ['default']"]


def test_no_warning_at_a_node_without_successors(caplog: pytest.LogCaptureFixture) -> None:
    action, messages = run_recording(Graph(start=Signal()), {})
    assert (action, messages) == ("finished", [])


def test_graph_end_is_also_logged_by_the_graph(caplog: pytest.LogCaptureFixture) -> None:
    start = Signal()
    start >> Node()
    with caplog.at_level(logging.WARNING, logger="Graph"):
        run_recording(Graph(start=start), {})
    assert any("returned action 'finished' but only has successors for ['default']"
               in r.getMessage() for r in caplog.records)


def test_running_a_wired_node_alone_warns_that_successors_will_not_run() -> None:
    node = Node(node_id="a")
    node >> Node()
    with pytest.warns(UserWarning, match="Node a: Has 1 successors but won't execute them"):
        node.run({})


def test_overwriting_a_successor_warns() -> None:
    node = Node(node_id="a")
    node >> Add(1)
    with pytest.warns(UserWarning, match="Node a: Overwriting successor for action 'default'. "
                                         "Previous: Add, New: Signal"):
        node >> Signal()


# --- fallbacks, async ---------------------------------------------------------------


class Fallback(Node):
    def __init__(self, fail: bool, max_retries: int = 1) -> None:
        super().__init__(max_retries=max_retries)
        self.fail = fail
        self.attempts = 0

    def exec(self, prep_res: Any) -> str:
        self.attempts += 1
        if self.fail:
            raise ValueError("intentional")
        return "success"

    def exec_fallback(self, prep_res: Any, exc: BaseException) -> str:
        return "fallback"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared.setdefault("results", []).append((self.attempts, exec_res))


@pytest.mark.parametrize(("fail", "retries", "expected"),
                         [(False, 1, (1, "success")), (True, 2, (2, "fallback")),
                          (True, 3, (3, "fallback"))])
def test_retries_come_before_the_fallback(fail: bool, retries: int,
                                          expected: tuple[int, str]) -> None:
    shared: dict[str, Any] = {}
    Fallback(fail, retries).run(shared)
    assert shared["results"] == [expected]


def test_async_graph_and_async_fallback() -> None:
    class AsyncFallback(AsyncNode):
        async def exec_async(self, prep_res: Any) -> str:
            raise ValueError("intentional")

        async def exec_fallback_async(self, prep_res: Any, exc: BaseException) -> str:
            await asyncio.sleep(0)
            return f"async_fallback after {type(exc).__name__}"

        async def post_async(self, shared: dict[str, Any], p: Any, res: str) -> str:
            shared["result"] = res
            return "done"

    shared: dict[str, Any] = {}
    first = AsyncFallback()
    first - "done" >> Signal()
    assert asyncio.run(AsyncGraph(start=first).run_async(shared)) == "finished"
    assert shared["result"] == "async_fallback after ValueError"


def test_async_parallel_batch_node_overlaps_and_raises_the_items_error() -> None:
    order: list[int] = []

    class Track(AsyncParallelBatchNode):
        async def prep_async(self, shared: dict[str, Any]) -> list[int]:
            return list(shared["items"])

        async def exec_async(self, item: int) -> int:
            await asyncio.sleep(0.05 if item % 2 == 0 else 0.01)
            if item == 99:
                raise ValueError(f"item {item}")
            order.append(item)
            return item * 2

        async def post_async(self, shared: dict[str, Any], p: Any, res: list[int]) -> None:
            shared["out"] = res

    shared: dict[str, Any] = {"items": range(4)}
    asyncio.run(Track().run_async(shared))
    assert shared["out"] == [0, 2, 4, 6]  # input order, whatever the finishing order
    assert order.index(1) < order.index(0) and order.index(3) < order.index(2)
    with pytest.raises(ValueError, match="item 99"):
        asyncio.run(Track().run_async({"items": [1, 99, 3]}))
