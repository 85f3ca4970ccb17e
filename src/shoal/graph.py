"""KayGraph's nodes and graphs (prep / exec / post) as a thin layer over the engine.

A node does its work in three steps::

    prep(shared) -> prep_res          read what it needs from the shared dict
    exec(prep_res) -> exec_res        the work itself; retried, may fall back
    post(shared, prep_res, exec_res)  write results back, return an action

and a ``Graph`` follows the actions from node to node::

    graph = Graph()
    graph.start(load) >> split >> work    # or Graph(start=load)
    work - "retry" >> split                # a named action
    graph.run(shared)

The names and signatures are KayGraph's, so KayGraph code runs with only its
imports changed: ``Node(max_retries, wait, node_id)``, ``node.params`` /
``set_params``, ``node.logger``, ``ParallelBatchNode(max_workers, ...)``,
``MetricsNode(collect_metrics, ...)`` with ``get_stats()``, and KayGraph's
warnings. As in KayGraph, a graph runs a shallow copy of each node with the
graph's params, so one node object can sit in several graphs. The node
classes live in ``shoal._graph_nodes``; every ``exec`` call goes through the
engine.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Generator
from typing import Any

from shoal._core.errors import GraphError, InvalidGraphError
from shoal._graph_nodes import (
    DEFAULT_ACTION,
    AsyncBatchNode,
    AsyncNode,
    AsyncParallelBatchNode,
    BaseNode,
    BatchNode,
    MetricsNode,
    N,
    Node,
    ParallelBatchNode,
    graph_pools,
)

__all__ = [
    "AsyncBatchNode",
    "AsyncGraph",
    "AsyncNode",
    "AsyncParallelBatchNode",
    "BaseNode",
    "BatchNode",
    "Graph",
    "GraphError",
    "InvalidGraphError",
    "MetricsNode",
    "Node",
    "ParallelBatchNode",
]


class Graph(BaseNode):
    """Runs nodes from its start node, following the action each one returns.

    The run ends at a node with no successor for its action; when that node
    has successors for other actions, KayGraph's ``UserWarning`` says so
    (``Graph ends: 'x' not found in ['default']``; ``'None'`` for a ``post``
    that returned None). Each node runs as a shallow copy with the graph's
    params. A graph is itself a node, so graphs nest; ``run`` returns
    ``post(shared, prep_res, last action)``, by default the last action.

    Args:
        start: the first node, or None and ``graph.start(node)`` later.
        max_steps: stop with ``GraphError`` after this many node runs (a
            guard for graphs with cycles); None for no limit.
        node_id: as ``BaseNode``.

    Raises:
        InvalidGraphError: ``start`` is not a node.
    """

    def __init__(self, start: BaseNode | None = None, *, max_steps: int | None = None,
                 node_id: str | None = None) -> None:
        super().__init__(node_id)
        self.start_node = None if start is None else _check_node(start, "start")
        self.max_steps = max_steps

    def start(self, start: N) -> N:
        """Make ``start`` the first node and return it: ``graph.start(a) >> b``.

        Raises:
            InvalidGraphError: ``start`` is not a node.
        """
        self.start_node = _check_node(start, "start")
        return start

    def prep(self, shared: Any) -> Any:
        """Runs before the first node; its return reaches ``post``."""
        return None

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Runs after the last node; ``exec_res`` is its action. Returns the graph's action."""
        return exec_res

    def get_next_node(self, node: BaseNode, action: str | None) -> BaseNode | None:
        """The node to run after ``node`` returned ``action``; None ends the run."""
        nxt = node.successors.get(action or DEFAULT_ACTION)
        if nxt is None and node.successors:
            actions = list(node.successors)
            # stacklevel 5: the caller of graph.run (through _steps and _run).
            warnings.warn(f"Graph ends: '{action}' not found in {actions}", UserWarning,
                          stacklevel=5)
            self.logger.warning("Graph execution terminated: Node %s returned action '%s' but "
                                "only has successors for %s.", node.node_id, action, actions)
        return nxt

    def _steps(self) -> Generator[BaseNode, str | None, None]:
        """The copies of the nodes to run, one per step, with the graph's params.

        Raises:
            GraphError: no start node, or more than ``max_steps`` node runs.
        """
        if self.start_node is None:
            raise GraphError(f"{self!r} has no start node; pass Graph(start=node) or call "
                             "graph.start(node) before running it")
        node: BaseNode | None = self.start_node
        steps = 0
        while node is not None:
            if self.max_steps is not None and steps >= self.max_steps:
                raise GraphError(f"graph stopped after max_steps={self.max_steps} node runs "
                                 f"(next: {node!r}); raise max_steps or check for a cycle")
            current = copy.copy(node)
            current.set_params(self.params)
            self.logger.debug("Graph transition to node: %s", current.node_id)
            action = yield current
            steps += 1
            node = self.get_next_node(current, action)

    def _run(self, shared: Any) -> Any:
        prep_res = self.prep(shared)
        steps = self._steps()
        action: str | None = None
        with graph_pools():  # the batch nodes share workers for this run
            try:
                node = next(steps)
                while True:
                    action = node._run(shared)
                    node = steps.send(action)
            except StopIteration:
                pass
        return self.post(shared, prep_res, action)

    async def _run_async(self, shared: Any) -> Any:
        prep_res = self.prep(shared)
        steps = self._steps()
        action: str | None = None
        try:
            node = next(steps)
            while True:
                action = await node._run_async(shared)
                node = steps.send(action)
        except StopIteration:
            pass
        return self.post(shared, prep_res, action)


class AsyncGraph(Graph):
    """KayGraph's name for a graph run from a coroutine: ``await graph.run_async(shared)``.

    Every ``Graph`` runs async and sync nodes alike; this class only keeps
    KayGraph code importing ``AsyncGraph`` working.
    """


def _check_node(node: N, what: str) -> N:
    if not isinstance(node, BaseNode):
        raise InvalidGraphError(f"{what} must be a node, got {type(node).__name__}")
    return node


