"""nadoo_flow's workflow nodes and batch processor, run by the engine.

The names and behaviour are nadoo_flow's (``nadoo_flow.batch``), so its code
runs with only the imports changed. A ``BaseNode`` turns a ``NodeContext``
into a ``NodeResult``. Whatever runs several nodes at once
(``BatchProcessor``, ``MapNode``, ``ParallelNode``) hands them to the engine
(``aimap``, asyncio backend by default), so retries, timeouts, rate limits,
progress and checkpoints apply and cancellation is real. ``a | b`` is a
``Pipeline``: b gets a's output.

A node fails in two ways, kept apart as nadoo_flow keeps them:

* it returns ``NodeResult(success=False, error=...)``: a failed
  ``BatchResult`` (its ``error`` and ``output`` are the NodeResult's), always
  data, never raised, whatever ``continue_on_error`` says; with ``retries=``
  the engine tries it again first;
* it raises: with ``continue_on_error=True`` (the default) a failed
  ``BatchResult`` with ``error=str(exception)``; with ``continue_on_error=False``
  the node's own exception is raised from ``batch`` / ``batch_as_completed`` /
  ``process_single``, and the inputs still running are cancelled.

An exception propagates out of a ``Pipeline``; in ``ParallelNode`` it fails
that child. ``FilterNode`` and ``ReduceNode`` turn an exception of their
function into ``NodeResult(success=False)``.
"""

from __future__ import annotations

import enum
import functools
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, cast

from shoal._core.api import aimap, arun_batch
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._core.results import ItemResult

__all__ = [
    "BaseNode", "BatchProcessor", "BatchResult", "FilterNode", "ListNode", "MapNode",
    "NodeContext", "NodeResult", "ParallelNode", "ParallelStrategy", "Pipeline", "ReduceNode",
    "WorkflowContext",
]


# ------------------------------------------------------------------ data types
@dataclass
class NodeContext:
    """The input of one node execution.

    ``node_id`` and ``node_type`` are nadoo_flow's; the batch processor fills
    them with its node's. ``get_input(key)`` reads ``input_data[key]``.
    """

    input_data: Any = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    node_id: str = ""
    node_type: str = ""

    def get_input(self, key: str, default: Any = None) -> Any:
        """``input_data[key]``, or ``default`` when it is missing (or not a mapping)."""
        data = self.input_data
        return data.get(key, default) if isinstance(data, Mapping) else default


@dataclass
class WorkflowContext:
    """State shared by every node of one workflow run."""

    workflow_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    variables: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeResult:
    """What a node's ``execute`` returns: success or failure, and its output.

    ``error`` and ``metadata`` are keyword-only: nadoo_flow's positional order
    has other fields between them, so a positional call would mean something
    else here.
    """

    success: bool
    output: Any = None
    _: KW_ONLY
    error: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class BatchResult:
    """The outcome of one input of a batch (mutable: callers may re-index it).

    Attributes:
        index: the input's position in the batch.
        input_data: the input itself.
        success: the node's ``NodeResult.success``; False when it raised.
        output: the NodeResult's output (a failed one's too); None when it raised.
        error: the NodeResult's ``error``, or ``str(exception)``.
        execution_time: seconds of the last attempt.
    """

    index: int
    input_data: Any
    success: bool
    output: Any = None
    error: str | None = None
    execution_time: float | None = None


class _Unsuccessful(Exception):
    """A ``NodeResult(success=False)``, raised so the engine counts (and may retry) it.

    The batch processor turns it back into data; it never reaches the caller.
    """

    def __init__(self, result: NodeResult) -> None:
        super().__init__(result.error or "the node returned success=False")
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))  # crosses back from a worker process


def _message(error: BaseException | None) -> str:
    return str(error) or type(error).__name__


def _batch_result(r: ItemResult[Any]) -> BatchResult:
    if r.ok:
        value = cast(NodeResult, r.value)
        return BatchResult(r.index, r.item, True, value.output, None, r.duration)
    if isinstance(r.error, _Unsuccessful):
        failed = r.error.result
        return BatchResult(r.index, r.item, False, failed.output, failed.error, r.duration)
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
    ``node_type``, ``name`` and ``config`` are nadoo_flow's descriptive fields.
    """

    def __init__(self, node_id: str, node_type: str = "custom", name: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.name = name or node_id
        self.config: dict[str, Any] = dict(config or {})

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
        super().__init__(node_id or " | ".join(n.node_id for n in self.nodes), "pipeline")

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        data = node_context.input_data
        done: list[str] = []
        for node in self.nodes:
            result = await node.execute(NodeContext(input_data=data), workflow_context)
            done.append(node.node_id)
            if not result.success:
                meta = {**(result.metadata or {}), "failed_node": node.node_id, "steps": done}
                return NodeResult(False, result.output, error=result.error, metadata=meta)
            data = result.output
        return NodeResult(True, data, metadata={"steps": done})


# --------------------------------------------------------- batch processing
async def _run_node(node: BaseNode, context: WorkflowContext, input_data: Any) -> NodeResult:
    """The engine's per-item function of a BatchProcessor."""
    node_context = NodeContext(input_data=input_data, node_id=node.node_id,
                               node_type=node.node_type)
    result = await node.execute(node_context, context)
    if not result.success:
        raise _Unsuccessful(result)
    return result


class BatchProcessor:
    """nadoo_flow's batch processor: one node over many inputs, through the engine.

    Each input runs as ``node.execute(NodeContext(input_data=input), workflow_context)``,
    at most ``max_concurrency`` at once on ``backend``, with any other engine
    option in ``**options`` (``retries``, ``timeout``, ``rate``, ``progress``,
    ``checkpoint``...). The workflow context is the one given to ``batch``, else
    the processor's ``workflow_context``, else a fresh one per call.
    ``continue_on_error`` decides what an exception does (see the module
    docstring); a ``NodeResult(success=False)`` is a failed ``BatchResult``
    either way, after the engine's retries.

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
        self.workflow_context = workflow_context
        # One input per task unless asked otherwise: nodes are usually slow
        # calls, each reported (batch_as_completed) and timed on its own.
        options.setdefault("chunk_size", 1)
        # The engine always collects: which failures stop the batch is
        # nadoo_flow's rule (exceptions, not NodeResults), applied below.
        self._options = _engine_options(type(self).__name__, options, backend=backend,
                                        workers=max_concurrency, on_error="collect_errors")

    def _item_function(self, workflow_context: WorkflowContext | None) -> Callable[[Any], Any]:
        context = workflow_context or self.workflow_context or WorkflowContext()
        # Not a bound method: a process or Dask worker needs the node and the
        # context, not the processor and its run options (say, a progress callback).
        return functools.partial(_run_node, self.node, context)

    def _check(self, item: ItemResult[Any]) -> BatchResult:
        """The item's BatchResult; raises the node's exception when it must stop the batch."""
        if not (item.ok or self.continue_on_error or isinstance(item.error, _Unsuccessful)):
            assert item.error is not None  # a failed result carries its exception
            raise item.error
        return _batch_result(item)

    async def process_single(self, input_data: Any, index: int = 0,
                             workflow_context: WorkflowContext | None = None) -> BatchResult:
        """Run the node on one input (through the engine) as input number ``index``.

        Raises:
            Exception: the node's own exception, when ``continue_on_error`` is False.
        """
        report = await arun_batch(self._item_function(workflow_context), [input_data],
                                  **self._options)
        result = self._check(report.results[0])
        result.index = index
        return result

    async def batch_as_completed(self, inputs: Iterable[Any],
                                 workflow_context: WorkflowContext | None = None,
                                 ) -> AsyncIterator[BatchResult]:
        """Yield a ``BatchResult`` per input as each finishes (completion order).

        Inputs are pulled lazily, so a generator of inputs streams. Stopping
        early (``break`` and ``aclose()``) cancels the inputs still running.

        Raises:
            Exception: the first exception a node raised, when
                ``continue_on_error`` is False (the inputs still running are
                cancelled; none is pulled after it).
        """
        stream = aimap(self._item_function(workflow_context), inputs, ordered=False,
                       **self._options)
        try:
            async for item in stream:
                yield self._check(item)
        finally:
            await stream.aclose()

    async def batch(self, inputs: Iterable[Any],
                    workflow_context: WorkflowContext | None = None) -> list[BatchResult]:
        """Run every input and return the ``BatchResult``s in input order.

        Built on ``batch_as_completed``, so a subclass that overrides it
        (rate limiting, say) changes ``batch`` too.

        Raises:
            Exception: as ``batch_as_completed``.
        """
        # A subclass may override batch_as_completed(self, inputs) without the
        # context (the seed's rate-limited processor does): pass it only when given.
        stream = (self.batch_as_completed(inputs) if workflow_context is None
                  else self.batch_as_completed(inputs, workflow_context))
        results = [r async for r in stream]
        results.sort(key=lambda r: r.index)
        return results


# ------------------------------------------------------------ list nodes
class ListNode(BaseNode):
    """Base of the nodes that work on the list ``input_data[input_key]``.

    Subclasses implement ``apply(items, workflow_context)``. A missing (or
    None) key, or a value that is not a list (a str is not; any other
    iterable is taken), gives a failed NodeResult with nadoo_flow's message,
    without calling ``apply``.
    """

    def __init__(self, node_id: str, input_key: str, output_key: str,
                 node_type: str = "custom", name: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(node_id, node_type, name, config)
        self.input_key = input_key
        self.output_key = output_key

    @abstractmethod
    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        """Compute the node's result from the input list."""

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        value = node_context.get_input(self.input_key)
        if value is None:
            return NodeResult(False, error=f"Input key '{self.input_key}' not found")
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            return NodeResult(False, error=f"Input '{self.input_key}' must be a list")
        return await self.apply(list(value), workflow_context)


class MapNode(ListNode):
    """Run ``child_node`` on each element of ``input_data[input_key]``.

    The child gets ``NodeContext(input_data={"item": element})`` and runs
    through a ``BatchProcessor`` (at most ``max_concurrency`` at once, engine
    ``**options`` such as ``retries`` or ``timeout`` applied); every element
    runs even when some fail. Success: ``{output_key: [outputs in element
    order], "total", "succeeded", "failed": 0}``. Any failure fails the
    MapNode with ``"Some items failed: <n> errors"`` and
    ``metadata["errors"] = [{"index", "error"}, ...]``.

    Raises:
        InvalidOptionError: a bad engine option.
    """

    def __init__(self, node_id: str, child_node: BaseNode, input_key: str = "items",
                 output_key: str = "results", max_concurrency: int = 10, name: str = "Map",
                 config: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(node_id, input_key, output_key, "map", name, config)
        self.child_node = child_node
        self.max_concurrency = max_concurrency
        self._options = _engine_options(type(self).__name__, options)

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        processor = BatchProcessor(self.child_node, self.max_concurrency, **self._options)
        results = await processor.batch([{"item": x} for x in items], workflow_context)
        errors = [{"index": r.index, "error": r.error} for r in results if not r.success]
        if errors:
            return NodeResult(False, error=f"Some items failed: {len(errors)} errors",
                              metadata={"errors": errors})
        return NodeResult(True, {self.output_key: [r.output for r in results],
                                 "total": len(items), "succeeded": len(results), "failed": 0})


class FilterNode(ListNode):
    """Keep the elements of ``input_data[input_key]`` for which ``filter_fn`` is true.

    Output: ``{output_key: [kept elements, in order], "original_count",
    "filtered_count"}``. An exception from ``filter_fn`` gives
    ``NodeResult(success=False, error="Filter function failed: <exception>")``.
    """

    def __init__(self, node_id: str, filter_fn: Callable[[Any], Any],
                 input_key: str = "items", output_key: str = "filtered", name: str = "Filter",
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(node_id, input_key, output_key, "filter", name, config)
        self.filter_fn = filter_fn

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        try:
            kept = [x for x in items if self.filter_fn(x)]
        except Exception as exc:
            return NodeResult(False, error=f"Filter function failed: {exc}")
        return NodeResult(True, {self.output_key: kept, "original_count": len(items),
                                 "filtered_count": len(kept)})


class ReduceNode(ListNode):
    """Fold ``input_data[input_key]`` into one value: ``reduce_fn(acc, element)``.

    Starts from ``initial_value`` (nadoo_flow requires it; None by default
    here), so ``reduce_fn`` is called once per element, and an empty list
    gives ``initial_value``. Output: ``{output_key: value, "processed_count"}``.
    An exception from ``reduce_fn`` gives ``NodeResult(success=False,
    error="Reduce function failed: <exception>")``.
    """

    def __init__(self, node_id: str, reduce_fn: Callable[[Any, Any], Any],
                 initial_value: Any = None, input_key: str = "items",
                 output_key: str = "result", name: str = "Reduce",
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(node_id, input_key, output_key, "reduce", name, config)
        self.reduce_fn = reduce_fn
        self.initial_value = initial_value

    async def apply(self, items: list[Any], workflow_context: WorkflowContext) -> NodeResult:
        try:
            value = functools.reduce(self.reduce_fn, items, self.initial_value)
        except Exception as exc:
            return NodeResult(False, error=f"Reduce function failed: {exc}")
        return NodeResult(True, {self.output_key: value, "processed_count": len(items)})


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
        super().__init__(node_id or f"parallel({','.join(n.node_id for n in self.nodes)})",
                         "parallel")
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
            return NodeResult(result.success, result.output, error=result.error, metadata=meta)
        if strategy is ParallelStrategy.ALL and not result.success:
            meta = {**(result.metadata or {}), "failed_node": node_id}
            return NodeResult(False, None, error=f"{node_id}: {result.error}", metadata=meta)
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
        return NodeResult(False, None, error=f"all {len(ordered)} nodes failed: {errors}")
