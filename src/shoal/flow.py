"""Workflow nodes, and a batch processor over them, run by the engine.

A ``BaseNode`` turns a ``NodeContext`` into a ``NodeResult``. Whatever runs
several nodes at once (``BatchProcessor``, ``MapNode``, ``ParallelNode``)
hands them to the engine (``aimap``/``arun_batch``, asyncio backend by
default), so retries, timeouts, rate limits, progress and checkpoints apply
and cancellation is real. ``a | b`` is a ``Pipeline``: b gets a's output.

A node fails by returning ``NodeResult(success=False, error=...)`` or by
raising. ``BatchProcessor`` turns either into a failed ``BatchResult``
(``error`` is the NodeResult's error or ``str(exception)``), or raises
``NodeFailed`` when ``continue_on_error=False``. An exception propagates
out of a ``Pipeline``; in ``ParallelNode`` and ``MapNode`` it fails that child.
"""

from __future__ import annotations

import enum
import functools
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from shoal._core.api import aimap, arun_batch
from shoal._core.errors import InvalidOptionError, ShoalError
from shoal._core.options import Options
from shoal._core.results import ItemResult

__all__ = [
    "BaseNode", "BatchProcessor", "BatchResult", "FilterNode", "ListNode", "MapNode",
    "NodeContext", "NodeFailed", "NodeResult", "ParallelNode", "ParallelStrategy", "Pipeline",
    "ReduceNode", "WorkflowContext",
]


# ------------------------------------------------------------------ data types
@dataclass
class NodeContext:
    """The input of one node execution."""

    input_data: Any = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkflowContext:
    """State shared by every node of one workflow run."""

    workflow_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    variables: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeResult:
    """What a node's ``execute`` returns: success or failure, and its output."""

    success: bool
    output: Any = None
    error: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class BatchResult:
    """The outcome of one input of a batch (mutable: callers may re-index it).

    Attributes:
        index: the input's position in the batch.
        input_data: the input itself.
        success: True when the node returned ``NodeResult(success=True)``.
        output: the node's output on success, else None.
        error: the failure's message (the NodeResult's ``error``, or
            ``str(exception)``), else None.
        execution_time: seconds of the last attempt.
    """

    index: int
    input_data: Any
    success: bool
    output: Any = None
    error: str | None = None
    execution_time: float | None = None


class NodeFailed(ShoalError):
    """A node failed and the caller asked to stop (``continue_on_error=False``).

    Attributes:
        result: the failed ``BatchResult`` (index, input, error message).
        node_id: the id of the node that failed.
    """

    def __init__(self, result: BatchResult, node_id: str) -> None:
        super().__init__(f"node {node_id!r} failed on input {result.index}: {result.error}")
        self.result = result
        self.node_id = node_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result, self.node_id))


class _Unsuccessful(Exception):
    """A ``NodeResult(success=False)``, raised so the engine counts (and may retry) it.

    Its only argument is the message, so it pickles back from a worker process.
    """


def _message(error: BaseException | None) -> str:
    return str(error) or type(error).__name__


def _batch_result(r: ItemResult[Any]) -> BatchResult:
    if r.ok:
        value = cast(NodeResult, r.value)
        return BatchResult(r.index, r.item, True, value.output, None, r.duration)
    return BatchResult(r.index, r.item, False, None, _message(r.error), r.duration)


def _engine_options(owner: str, options: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """Merge the caller's engine options with the ones ``owner`` sets itself.

    Raises:
        InvalidOptionError: the caller set one of the fixed options, or the
            engine refuses an option.
    """
    for name in ("workers", "on_error", "ordered", *fixed):
        if name in options:
            hint = {"workers": "; use max_concurrency=", "on_error": "; use continue_on_error="}
            raise InvalidOptionError(f"{owner} sets {name}= itself{hint.get(name, '')}")
    merged = {**options, **fixed}
    Options.from_kwargs("collect_errors", merged)  # fail at construction, not mid-run
    return merged


# ------------------------------------------------------------------- nodes
class BaseNode(ABC):
    """A step of a workflow. Subclasses implement ``execute``.

    ``a | b`` builds a ``Pipeline`` that feeds ``a``'s output to ``b``.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    @abstractmethod
    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        """Run the node on ``node_context.input_data``.

        Raises:
            Exception: a failure; callers treat it like ``NodeResult(success=False)``
                (see the module docstring for where it propagates).
        """

    def __or__(self, other: BaseNode) -> Pipeline:
        return Pipeline([*_steps(self), *_steps(other)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.node_id!r})"


def _steps(node: BaseNode) -> list[BaseNode]:
    return list(node.nodes) if isinstance(node, Pipeline) else [node]


class Pipeline(BaseNode):
    """Nodes run one after another; each output is the next node's ``input_data``.

    Stops at the first ``NodeResult(success=False)`` and returns a failure
    with that node's error and ``metadata["failed_node"]``; on success the
    output is the last node's output. Exceptions propagate unchanged.

    Raises:
        InvalidOptionError: no nodes.
    """

    def __init__(self, nodes: Sequence[BaseNode], node_id: str | None = None) -> None:
        if not nodes:
            raise InvalidOptionError("a Pipeline needs at least one node")
        self.nodes: list[BaseNode] = list(nodes)
        super().__init__(node_id or " | ".join(n.node_id for n in self.nodes))

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        data = node_context.input_data
        done: list[str] = []
        for node in self.nodes:
            result = await node.execute(NodeContext(input_data=data), workflow_context)
            done.append(node.node_id)
            if not result.success:
                meta = {**(result.metadata or {}), "failed_node": node.node_id, "steps": done}
                return NodeResult(False, result.output, result.error, meta)
            data = result.output
        return NodeResult(True, data, metadata={"steps": done})


# --------------------------------------------------------- batch processing
async def _run_node(node: BaseNode, context: WorkflowContext, input_data: Any) -> NodeResult:
    """The engine's per-item function of a BatchProcessor."""
    result = await node.execute(NodeContext(input_data=input_data), context)
    if not result.success:
        raise _Unsuccessful(result.error or f"node {node.node_id!r} returned success=False")
    return result


class BatchProcessor:
    """Run one node over many inputs through the engine.

    Each input runs as ``node.execute(NodeContext(input_data=input),
    workflow_context)`` (a fresh ``WorkflowContext`` by default), at most
    ``max_concurrency`` at once on ``backend``, with any other engine option
    in ``**options`` (``retries``, ``timeout``, ``rate``, ``progress``,
    ``checkpoint``...). A ``NodeResult(success=False)`` is a failed attempt,
    retried like an exception. ``continue_on_error=False`` maps to the
    engine's ``on_error="all_or_nothing"``: the first failure raises
    ``NodeFailed`` and inputs that have not started never start.

    Raises:
        InvalidOptionError: ``workers``/``on_error``/``ordered`` in ``options``
            (set by the processor) or an option the engine refuses.
    """

    def __init__(self, node: BaseNode, max_concurrency: int = 10,
                 continue_on_error: bool = True, backend: str = "asyncio", *,
                 workflow_context: WorkflowContext | None = None, **options: Any) -> None:
        self.node = node
        self.max_concurrency = max_concurrency
        self.continue_on_error = continue_on_error
        self.workflow_context = WorkflowContext() if workflow_context is None else workflow_context
        on_error = "collect_errors" if continue_on_error else "all_or_nothing"
        # One input per task unless asked otherwise: nodes are usually slow
        # calls, each reported (batch_as_completed) and timed on its own.
        options.setdefault("chunk_size", 1)
        self._options = _engine_options(type(self).__name__, options, backend=backend,
                                        workers=max_concurrency, on_error=on_error)

    @property
    def _fn(self) -> Callable[[Any], Any]:
        # Not a bound method: a process or Dask worker needs the node and the
        # context, not the processor and its run options (say, a progress callback).
        return functools.partial(_run_node, self.node, self.workflow_context)

    def _failed(self, result: BatchResult, error: BaseException | None) -> NodeFailed:
        exc = NodeFailed(result, self.node.node_id)
        exc.__cause__ = None if isinstance(error, _Unsuccessful) else error
        return exc

    async def process_single(self, input_data: Any, index: int = 0) -> BatchResult:
        """Run the node on one input (through the engine) as input number ``index``.

        Raises:
            NodeFailed: it failed and ``continue_on_error`` is False.
        """
        report = await arun_batch(self._fn, [input_data],
                                  **{**self._options, "on_error": "collect_errors"})
        item = report.results[0]
        result = _batch_result(item)
        result.index = index
        if not result.success and not self.continue_on_error:
            raise self._failed(result, item.error)
        return result

    async def batch_as_completed(self, inputs: Iterable[Any]) -> AsyncIterator[BatchResult]:
        """Yield a ``BatchResult`` per input as each finishes (completion order).

        Inputs are pulled lazily, so a generator of inputs streams. Stopping
        early (``break`` and ``aclose()``) cancels the inputs still running.

        Raises:
            NodeFailed: the first failure, when ``continue_on_error`` is False.
        """
        stream = aimap(self._fn, inputs, ordered=False, **self._options)
        try:
            async for item in stream:
                result = _batch_result(item)
                if not result.success and not self.continue_on_error:
                    raise self._failed(result, item.error)
                yield result
        finally:
            await stream.aclose()

    async def batch(self, inputs: Iterable[Any]) -> list[BatchResult]:
        """Run every input and return the ``BatchResult``s in input order.

        Built on ``batch_as_completed``, so a subclass that overrides it
        (rate limiting, say) changes ``batch`` too.

        Raises:
            NodeFailed: the first failure, when ``continue_on_error`` is False.
        """
        results = [r async for r in self.batch_as_completed(inputs)]
        results.sort(key=lambda r: r.index)
        return results


# ------------------------------------------------------------ list nodes
class ListNode(BaseNode):
    """Base of the nodes that work on the list ``input_data[input_key]``.

    Subclasses implement ``apply(items, workflow_context)``. A missing key or
    a value that is not a list (a str is not) gives a failed NodeResult
    naming the node and the key, without calling ``apply``.
    """

    def __init__(self, node_id: str, input_key: str, output_key: str) -> None:
        super().__init__(node_id)
        self.input_key = input_key
        self.output_key = output_key

    @abstractmethod
    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        """Compute the node's result from the input list."""

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        try:
            value = node_context.input_data[self.input_key]
        except (KeyError, TypeError, IndexError):
            return NodeResult(False, error=f"{self!r}: input has no key {self.input_key!r}")
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            return NodeResult(False, error=f"{self!r}: input[{self.input_key!r}] is not a list")
        return await self.apply(list(value), workflow_context)


class MapNode(ListNode):
    """Run ``child_node`` on each element of ``input_data[input_key]``.

    The child gets ``NodeContext(input_data={"item": element})``; its outputs,
    as they are and in element order, become ``{output_key: [...]}``. Children
    run through a ``BatchProcessor`` (at most ``max_concurrency`` at once,
    engine ``**options`` such as ``retries`` or ``timeout`` applied); the
    first failed child stops the rest and fails the MapNode with
    ``"item <i>: <error>"`` and ``metadata["failed_index"]``.

    Raises:
        InvalidOptionError: a bad engine option.
    """

    def __init__(self, node_id: str, child_node: BaseNode, input_key: str = "items",
                 output_key: str = "results", max_concurrency: int = 10,
                 **options: Any) -> None:
        super().__init__(node_id, input_key, output_key)
        self.child_node = child_node
        self.max_concurrency = max_concurrency
        self._options = _engine_options(type(self).__name__, options)

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        processor = BatchProcessor(self.child_node, self.max_concurrency, False,
                                   workflow_context=workflow_context, **self._options)
        try:
            results = await processor.batch([{"item": x} for x in items])
        except NodeFailed as exc:
            return NodeResult(False, error=f"item {exc.result.index}: {exc.result.error}",
                              metadata={"failed_index": exc.result.index})
        return NodeResult(True, {self.output_key: [r.output for r in results]})


class FilterNode(ListNode):
    """Keep the elements of ``input_data[input_key]`` for which ``filter_fn`` is true.

    Output: ``{output_key: [kept elements, in order]}``. An exception from
    ``filter_fn`` propagates.
    """

    def __init__(self, node_id: str, filter_fn: Callable[[Any], Any],
                 input_key: str = "items", output_key: str = "results") -> None:
        super().__init__(node_id, input_key, output_key)
        self.filter_fn = filter_fn

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        return NodeResult(True, {self.output_key: [x for x in items if self.filter_fn(x)]})


class ReduceNode(ListNode):
    """Fold ``input_data[input_key]`` into one value: ``reduce_fn(acc, element)``.

    Starts from ``initial_value`` (None by default), so ``reduce_fn`` is
    called once per element, and an empty list gives ``initial_value``.
    Output: ``{output_key: value}``. An exception from ``reduce_fn`` propagates.
    """

    def __init__(self, node_id: str, reduce_fn: Callable[[Any, Any], Any],
                 initial_value: Any = None, input_key: str = "items",
                 output_key: str = "result") -> None:
        super().__init__(node_id, input_key, output_key)
        self.reduce_fn = reduce_fn
        self.initial_value = initial_value

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        value = functools.reduce(self.reduce_fn, items, self.initial_value)
        return NodeResult(True, {self.output_key: value})


# ---------------------------------------------------------------- parallel
class ParallelStrategy(enum.Enum):
    """How ``ParallelNode`` combines its nodes' results.

    * ``ALL``: every node must succeed; output is the list of outputs in node
      order. The first failure fails the ParallelNode and cancels the rest.
    * ``ALL_SETTLED``: wait for every node; always succeeds; output is a list,
      in node order, of ``{"node_id", "success", "output", "error"}``.
    * ``RACE``: the first node to finish wins, success or failure; its result
      is the ParallelNode's. The others are cancelled.
    * ``ANY``: the first node to *succeed* wins; the others are cancelled.
      Fails only when every node fails (the error lists each node's error).

    A winner is named in ``metadata["winner"]``; a node that raises counts as
    failed with ``error=str(exception)``.
    """

    ALL = "all"
    ALL_SETTLED = "all_settled"
    RACE = "race"
    ANY = "any"


class ParallelNode(BaseNode):
    """Give one input to several nodes at once; combine as ``strategy`` says.

    The nodes run on the engine's asyncio backend, one worker each, with any
    engine ``**options`` (``timeout``, ``retries``) applied per node; those
    the strategy no longer needs are cancelled. ``node_id`` defaults to
    ``"parallel(<ids>)"``.

    Raises:
        InvalidOptionError: no nodes, or a bad engine option.
    """

    def __init__(self, node_id: str | None = None, nodes: Sequence[BaseNode] = (),
                 strategy: ParallelStrategy = ParallelStrategy.ALL, **options: Any) -> None:
        if not nodes:
            raise InvalidOptionError("ParallelNode needs at least one node (nodes=[...])")
        self.nodes: list[BaseNode] = list(nodes)
        self.strategy = ParallelStrategy(strategy)
        super().__init__(node_id or f"parallel({','.join(n.node_id for n in self.nodes)})")
        # chunk_size=1: every node starts at once (a chunk would run some in turn).
        self._options = _engine_options(type(self).__name__, options, backend="asyncio",
                                        workers=len(self.nodes), on_error="collect_errors",
                                        chunk_size=1)

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        async def run_child(index: int) -> NodeResult:
            context = NodeContext(input_data=node_context.input_data)
            return await self.nodes[index].execute(context, workflow_context)

        settled: dict[int, NodeResult] = {}
        stream = aimap(run_child, range(len(self.nodes)), ordered=False, **self._options)
        try:
            async for item in stream:
                result = (cast(NodeResult, item.value) if item.ok
                          else NodeResult(False, error=_message(item.error)))
                settled[item.index] = result
                decided = self._decide(item.index, result)
                if decided is not None:
                    return decided  # the finally below cancels the nodes still running
        finally:
            await stream.aclose()
        return self._combine(settled)

    def _decide(self, index: int, result: NodeResult) -> NodeResult | None:
        """A result that ends the race early, or None to wait for more."""
        node_id = self.nodes[index].node_id
        strategy = self.strategy
        wins = strategy is ParallelStrategy.RACE or (
            strategy is ParallelStrategy.ANY and result.success)
        if wins:
            meta = {**(result.metadata or {}), "winner": node_id}
            return NodeResult(result.success, result.output, result.error, meta)
        if strategy is ParallelStrategy.ALL and not result.success:
            meta = {**(result.metadata or {}), "failed_node": node_id}
            return NodeResult(False, None, f"{node_id}: {result.error}", meta)
        return None

    def _combine(self, settled: dict[int, NodeResult]) -> NodeResult:
        """The result once every node has finished (no early decision)."""
        ordered = [(node, settled[i]) for i, node in enumerate(self.nodes)]
        if self.strategy is ParallelStrategy.ALL:
            return NodeResult(True, [r.output for _, r in ordered])
        if self.strategy is ParallelStrategy.ALL_SETTLED:
            return NodeResult(True, [
                {"node_id": n.node_id, "success": r.success, "output": r.output, "error": r.error}
                for n, r in ordered
            ])
        # ANY with no success (RACE always decides on the first result).
        errors = "; ".join(f"{n.node_id}: {r.error}" for n, r in ordered)
        return NodeResult(False, None, f"all {len(ordered)} nodes failed: {errors}")
