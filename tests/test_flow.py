"""Behaviour of shoal.flow: nadoo_flow's BatchProcessor, list nodes, ParallelNode, pipelines.

nadoo_flow behaviours pinned here (learned from nadoo-flow-core 0.1.0's
``nadoo_flow/batch.py`` and ``base.py``): ``continue_on_error=False`` raises the
node's own exception; a ``NodeResult(success=False)`` is a failed
``BatchResult`` kept as data (its error and output), never raised;
``batch(inputs, workflow_context)``; ``MapNode`` runs every element and fails
with ``"Some items failed: <n> errors"``; ``FilterNode`` defaults
(``input_key="items"``, ``output_key="filtered"``) and counts; a filter or
reduce function that raises gives ``NodeResult(success=False)`` with
``"Filter function failed: ..."`` / ``"Reduce function failed: ..."``; the list
nodes' ``"Input key 'k' not found"`` / ``"Input 'k' must be a list"``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import shoal
from shoal.flow import (
    BaseNode,
    BatchProcessor,
    BatchResult,
    FilterNode,
    MapNode,
    NodeContext,
    NodeResult,
    ParallelNode,
    ParallelStrategy,
    Pipeline,
    ReduceNode,
    WorkflowContext,
)

Body = Callable[[Any], Awaitable[NodeResult]]


class FnNode(BaseNode):
    """A node whose execute is an async function of the input data."""

    def __init__(self, node_id: str, body: Body) -> None:
        super().__init__(node_id)
        self.body = body
        self.started: list[Any] = []

    async def execute(self, node_context: NodeContext,
                      workflow_context: WorkflowContext) -> NodeResult:
        self.started.append(node_context.input_data)
        return await self.body(node_context.input_data)


async def double(data: Any) -> NodeResult:
    await asyncio.sleep(0)
    value = data["n"]
    if value == "boom":
        raise RuntimeError("exploded")
    if value < 0:
        return NodeResult(False, {"seen": value}, error=f"negative {value}")
    return NodeResult(True, value * 2)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return shoal.arun(main())


def exec_node(node: BaseNode, input_data: Any) -> NodeResult:
    result: NodeResult = run(node.execute(NodeContext(input_data=input_data), WorkflowContext()))
    return result


def test_contexts_have_usable_defaults() -> None:
    wf = WorkflowContext()
    assert wf.workflow_id and wf.variables == {} and wf.metadata == {}
    assert WorkflowContext().workflow_id != wf.workflow_id
    assert NodeContext().input_data == {}
    assert NodeResult(True, 1) == NodeResult(success=True, output=1, error=None, metadata=None)


# --------------------------------------------------------------- BatchProcessor
def test_batch_returns_results_in_input_order() -> None:
    async def body(data: Any) -> NodeResult:
        await asyncio.sleep(0.001 * (4 - data["n"]))  # later inputs finish first
        return NodeResult(True, data["n"] * 2)

    results = run(BatchProcessor(FnNode("d", body)).batch([{"n": i} for i in range(5)]))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.output for r in results] == [0, 2, 4, 6, 8]
    assert all(r.success and r.error is None for r in results)
    assert all(isinstance(r.execution_time, float) for r in results)
    assert results[2].input_data == {"n": 2}


def test_failures_become_failed_results() -> None:
    inputs = [{"n": 1}, {"n": -1}, {"n": "boom"}, {"n": 2}]
    results = run(BatchProcessor(FnNode("d", double)).batch(inputs))
    assert [(r.success, r.output, r.error) for r in results] == [
        (True, 2, None),
        (False, {"seen": -1}, "negative -1"),  # a failed NodeResult keeps its output
        (False, None, "exploded"),
        (True, 4, None),
    ]


def test_stop_on_error_raises_the_nodes_own_exception() -> None:
    node = FnNode("d", double)
    processor = BatchProcessor(node, max_concurrency=1, continue_on_error=False)
    inputs = [{"n": 1}, {"n": "boom"}, *({"n": i} for i in range(2, 50))]
    with pytest.raises(RuntimeError, match=r"^exploded$") as info:
        run(processor.batch(inputs))
    assert type(info.value) is RuntimeError  # not a wrapper
    assert node.started[:2] == [{"n": 1}, {"n": "boom"}]
    assert len(node.started) < len(inputs)  # the batch stopped there


def test_stop_on_error_keeps_a_failed_node_result_as_data() -> None:
    node = FnNode("d", double)
    processor = BatchProcessor(node, max_concurrency=1, continue_on_error=False)
    results = run(processor.batch([{"n": 1}, {"n": -1}, {"n": 2}]))
    assert [(r.success, r.error) for r in results] == [
        (True, None), (False, "negative -1"), (True, None)]
    assert len(node.started) == 3


def test_batch_as_completed_yields_in_completion_order() -> None:
    async def main() -> list[int]:
        first_done = asyncio.Event()

        async def body(data: Any) -> NodeResult:
            if data == "second":
                await first_done.wait()  # finishes only after "first"
            else:
                first_done.set()
            return NodeResult(True, data)

        processor = BatchProcessor(FnNode("d", body), max_concurrency=2)
        return [r.index async for r in processor.batch_as_completed(["second", "first"])]

    assert run(main()) == [1, 0]


def test_batch_as_completed_streams_a_generator_and_stops_early() -> None:
    pulled: list[int] = []

    def inputs() -> Iterable[dict[str, int]]:
        for i in range(10_000):
            pulled.append(i)
            yield {"n": i}

    async def main() -> list[int]:
        stream = BatchProcessor(FnNode("d", double), max_concurrency=2).batch_as_completed(
            inputs())
        got = []
        async for r in stream:
            got.append(r.output)
            if len(got) == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return got

    assert len(run(main())) == 3
    assert len(pulled) < 10_000


def test_process_single() -> None:
    processor = BatchProcessor(FnNode("d", double))
    result = run(processor.process_single({"n": 21}, 7))
    assert isinstance(result, BatchResult)
    assert (result.index, result.success, result.output) == (7, True, 42)
    failed = run(processor.process_single({"n": -2}, 3))
    assert (failed.index, failed.success, failed.error) == (3, False, "negative -2")
    strict = BatchProcessor(FnNode("d", double), continue_on_error=False)
    assert not run(strict.process_single({"n": -2}, 3)).success
    with pytest.raises(RuntimeError, match="exploded"):
        run(strict.process_single({"n": "boom"}))


def test_batch_takes_the_workflow_context_as_nadoo_flow_does() -> None:
    seen: list[tuple[str, str, str]] = []

    class Ctx(BaseNode):
        async def execute(self, node_context: NodeContext,
                          workflow_context: WorkflowContext) -> NodeResult:
            seen.append((workflow_context.workflow_id, node_context.node_id,
                         node_context.get_input("k", "none")))
            return NodeResult(True)

    shared = WorkflowContext(workflow_id="wf-1")
    processor = BatchProcessor(Ctx("ctx", node_type="probe"))
    run(processor.batch([{"k": "a"}, {}], shared))
    assert sorted(seen) == [("wf-1", "ctx", "a"), ("wf-1", "ctx", "none")]
    seen.clear()
    run(processor.batch([{"k": 1}]))
    assert seen[0][0] != "wf-1"  # a fresh context when none is given


def test_engine_options_apply() -> None:
    calls: dict[int, int] = {}

    async def flaky(data: Any) -> NodeResult:
        calls[data] = calls.get(data, 0) + 1
        if calls[data] == 1:
            return NodeResult(False, error="try again")
        return NodeResult(True, data)

    retrying = BatchProcessor(FnNode("f", flaky), retries=shoal.RetryPolicy(1, backoff=0))
    assert [r.output for r in run(retrying.batch([1, 2]))] == [1, 2]
    assert calls == {1: 2, 2: 2}

    async def hang(data: Any) -> NodeResult:
        if data:
            await asyncio.Event().wait()
        return NodeResult(True, data)

    results = run(BatchProcessor(FnNode("h", hang), timeout=0.05).batch([0, 1]))
    assert results[0].success and not results[1].success
    assert "timeout" in (results[1].error or "")


def test_threads_backend() -> None:
    results = run(BatchProcessor(FnNode("d", double), backend="threads").batch(
        [{"n": 1}, {"n": 2}]))
    assert [r.output for r in results] == [2, 4]


@pytest.mark.parametrize(
    ("options", "match"),
    [({"workers": 2}, "sets workers"), ({"on_error": "skip_failed"}, "sets on_error"),
     ({"retires": 1}, "did you mean")],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], match: str) -> None:
    with pytest.raises(shoal.InvalidOptionError, match=match):
        BatchProcessor(FnNode("d", double), **options)


def test_worker_function_leaves_run_options_behind() -> None:
    lock = threading.Lock()  # a progress callback holding a lock cannot be pickled

    def progress(event: Any) -> None:
        with lock:
            pass

    processor = BatchProcessor(FnNode("d", double), progress=progress)
    fn = cloudpickle.loads(cloudpickle.dumps(processor._item_function(None)))
    assert run(fn({"n": 4})) == NodeResult(True, 8)


def test_a_failed_node_result_pickles_with_its_output() -> None:
    fn = cloudpickle.loads(cloudpickle.dumps(BatchProcessor(FnNode("d", double))._item_function(
        None)))
    with pytest.raises(Exception) as info:
        run(fn({"n": -3}))
    back = pickle.loads(pickle.dumps(info.value))
    assert back.result == NodeResult(False, {"seen": -3}, error="negative -3")


# ------------------------------------------------- the seed's subclass examples
class RateLimitedProcessor(BatchProcessor):
    def __init__(self, node: BaseNode, requests_per_second: int = 10) -> None:
        super().__init__(node=node, max_concurrency=requests_per_second)
        self.delay = 1.0 / requests_per_second

    # The seed's override, kept without workflow_context: BatchProcessor.batch
    # supports such subclasses (it passes the context only when given).
    async def batch_as_completed(  # type: ignore[override]
            self, inputs: Iterable[Any]) -> AsyncIterator[BatchResult]:
        for i, input_data in enumerate(inputs):
            if i > 0:
                await asyncio.sleep(self.delay)
            result = await self.process_single(input_data, i)
            yield result


def test_rate_limited_subclass() -> None:
    processor = RateLimitedProcessor(FnNode("api", double), requests_per_second=100)

    async def main() -> list[tuple[int, bool]]:
        inputs = [{"n": 1}, {"n": -1}, {"n": 3}]
        return [(r.index, r.success) async for r in processor.batch_as_completed(inputs)]

    assert run(main()) == [(0, True), (1, False), (2, True)]
    # batch() is built on batch_as_completed, so the override applies to it too.
    assert [r.output for r in run(processor.batch([{"n": 5}, {"n": 6}]))] == [10, 12]


class DynamicBatchProcessor:
    def __init__(self, node: BaseNode, target_time: float = 1.0) -> None:
        self.node = node
        self.target_time = target_time
        self.batch_size = 10

    async def process(self, items: list[Any]) -> list[BatchResult]:
        processor = BatchProcessor(node=self.node, max_concurrency=self.batch_size)
        start_time = time.time()
        results = await processor.batch(items[: self.batch_size])
        elapsed = time.time() - start_time
        if elapsed < self.target_time * 0.8:
            self.batch_size = min(self.batch_size * 2, 100)
        elif elapsed > self.target_time * 1.2:
            self.batch_size = max(self.batch_size // 2, 1)
        return results


def test_dynamic_batch_composition() -> None:
    dynamic = DynamicBatchProcessor(FnNode("d", double), target_time=1e9)  # always "fast"
    items = [{"n": i} for i in range(25)]
    first = run(dynamic.process(items))
    second = run(dynamic.process(items[10:]))
    assert [r.output for r in first] == [2 * i for i in range(10)]
    assert len(second) == 15 and dynamic.batch_size == 40


# ------------------------------------------------------------ list nodes
async def translate(data: Any) -> NodeResult:
    await asyncio.sleep(0)
    return NodeResult(True, {"Hello": "Hola", "World": "Mundo"}.get(data["item"], data["item"]))


def test_map_node_seed_output() -> None:
    child = FnNode("translate", translate)
    node = MapNode("batch_translate", child, input_key="texts", output_key="translations",
                   max_concurrency=5)
    result = exec_node(node, {"texts": ["Hello", "World", "AI"]})
    assert result.success
    assert result.output == {"translations": ["Hola", "Mundo", "AI"], "total": 3,
                             "succeeded": 3, "failed": 0}
    assert child.started == [{"item": "Hello"}, {"item": "World"}, {"item": "AI"}]


def test_map_node_caps_concurrency_runs_every_item_and_lists_the_failures() -> None:
    active = peak = 0

    async def body(data: Any) -> NodeResult:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        if data["item"] == "boom":
            raise ValueError("exploded")
        ok = data["item"] >= 0
        return NodeResult(ok, data["item"], error=None if ok else "neg")

    ok = exec_node(MapNode("m", FnNode("c", body), max_concurrency=2), {"items": list(range(6))})
    assert ok.output["results"] == list(range(6)) and peak <= 2

    child = FnNode("c", body)
    bad = exec_node(MapNode("m", child, max_concurrency=1), {"items": [0, -1, "boom", 3]})
    assert not bad.success and bad.error == "Some items failed: 2 errors"
    assert bad.metadata == {"errors": [{"index": 1, "error": "neg"},
                                       {"index": 2, "error": "exploded"}]}
    assert len(child.started) == 4  # nadoo_flow's MapNode does not stop at a failure


def test_filter_node_seed_output() -> None:
    node = FilterNode("filter_confident", lambda x: x["confidence"] > 0.8,
                      input_key="predictions", output_key="confident_predictions")
    result = exec_node(node, {"predictions": [
        {"text": "A", "confidence": 0.9},
        {"text": "B", "confidence": 0.6},
        {"text": "C", "confidence": 0.95},
    ]})
    assert result.output == {
        "confident_predictions": [{"text": "A", "confidence": 0.9},
                                  {"text": "C", "confidence": 0.95}],
        "original_count": 3, "filtered_count": 2}


def test_filter_node_default_keys_are_nadoo_flows() -> None:
    node = FilterNode("positive", lambda x: x > 0)
    assert (node.input_key, node.output_key) == ("items", "filtered")
    assert exec_node(node, {"items": [3, -1, 2]}).output == {
        "filtered": [3, 2], "original_count": 3, "filtered_count": 2}


def test_a_raising_filter_or_reducer_gives_a_failed_result() -> None:
    crash = FilterNode("f", lambda x: 1 / x)
    result = exec_node(crash, {"items": [1, 0]})
    assert (result.success, result.error) == (False, "Filter function failed: division by zero")
    total = ReduceNode("r", lambda acc, x: acc + x, 0)
    result = exec_node(total, {"items": [1, "two"]})
    assert not result.success
    assert result.error == ("Reduce function failed: unsupported operand type(s) for +: "
                            "'int' and 'str'")


def test_reduce_node_seed_outputs() -> None:
    total = ReduceNode("sum_scores", lambda acc, x: acc + x["score"], initial_value=0,
                       input_key="results", output_key="total_score")
    assert exec_node(total, {"results": [{"score": 1}, {"score": 2.5}]}).output == {
        "total_score": 3.5, "processed_count": 2}
    grouped = ReduceNode(
        "aggregate",
        lambda acc, x: {**acc, x["category"]: [*acc.get(x["category"], []), x["item"]]},
        initial_value={}, input_key="items", output_key="grouped",
    )
    items = [{"category": "a", "item": 1}, {"category": "b", "item": 2},
             {"category": "a", "item": 3}]
    assert exec_node(grouped, {"items": items}).output["grouped"] == {"a": [1, 3], "b": [2]}
    assert exec_node(total, {"results": []}).output == {"total_score": 0, "processed_count": 0}


@pytest.mark.parametrize(("data", "error"), [
    ({}, "Input key 'items' not found"), (None, "Input key 'items' not found"),
    ({"items": None}, "Input key 'items' not found"),
    ({"items": "abc"}, "Input 'items' must be a list"),
    ({"items": 3}, "Input 'items' must be a list"),
])
def test_list_nodes_report_bad_input(data: Any, error: str) -> None:
    result = exec_node(FilterNode("f", bool), data)
    assert (result.success, result.error) == (False, error)


# ------------------------------------------------------------ ParallelNode
class Probe:
    """Records how a child ended: finished normally or was cancelled."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.cancelled: set[str] = set()
        self.all_cancelled = asyncio.Event()
        self.expect_cancelled: set[str] = set()

    def node(self, node_id: str, result: NodeResult | Exception | None) -> FnNode:
        """None: never finishes unless cancelled."""

        async def body(data: Any) -> NodeResult:
            try:
                if result is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.cancelled.add(node_id)
                if self.cancelled >= self.expect_cancelled:
                    self.all_cancelled.set()
                raise
            self.finished.add(node_id)
            if isinstance(result, Exception):
                raise result
            assert result is not None
            return NodeResult(result.success, result.output or f"{node_id}:{data}",
                              error=result.error)

        return FnNode(node_id, body)


def run_parallel(strategy: ParallelStrategy, spec: dict[str, NodeResult | Exception | None],
                 ) -> tuple[NodeResult, Probe]:
    async def main() -> tuple[NodeResult, Probe]:
        probe = Probe()
        probe.expect_cancelled = {k for k, v in spec.items() if v is None}
        nodes = [probe.node(k, v) for k, v in spec.items()]
        result = await ParallelNode("p", nodes, strategy).execute(
            NodeContext(input_data="x"), WorkflowContext())
        if probe.expect_cancelled:  # cancellation really happens (no sleep involved)
            await asyncio.wait_for(probe.all_cancelled.wait(), 10)
        return result, probe

    return shoal.arun(main())


OK, FAIL = NodeResult(True), NodeResult(False, error="bad")


def test_parallel_all_outputs_in_node_order() -> None:
    result, _ = run_parallel(ParallelStrategy.ALL, {"a": OK, "b": OK, "c": OK})
    assert result.success and result.output == ["a:x", "b:x", "c:x"]


def test_parallel_all_fails_on_first_failure_and_cancels() -> None:
    result, probe = run_parallel(ParallelStrategy.ALL, {"slow": None, "b": FAIL})
    assert not result.success and result.error == "b: bad"
    assert result.metadata == {"failed_node": "b"}
    assert probe.cancelled == {"slow"} and "slow" not in probe.finished


def test_parallel_all_settled() -> None:
    result, _ = run_parallel(ParallelStrategy.ALL_SETTLED,
                             {"a": OK, "b": FAIL, "c": ValueError("oops")})
    assert result.success
    assert result.output == [
        {"node_id": "a", "success": True, "output": "a:x", "error": None},
        {"node_id": "b", "success": False, "output": "b:x", "error": "bad"},
        {"node_id": "c", "success": False, "output": None, "error": "oops"},
    ]


def test_parallel_race_first_finisher_wins_even_failing() -> None:
    result, probe = run_parallel(ParallelStrategy.RACE, {"slow": None, "fast": FAIL})
    assert (result.success, result.error, result.metadata) == (False, "bad", {"winner": "fast"})
    assert probe.cancelled == {"slow"} and "slow" not in probe.finished


def test_parallel_any_first_success_wins() -> None:
    result, probe = run_parallel(ParallelStrategy.ANY,
                                 {"bad": FAIL, "slow": None, "good": OK})
    assert (result.success, result.output, result.metadata) == (True, "good:x",
                                                                {"winner": "good"})
    assert probe.cancelled == {"slow"}


def test_parallel_any_fails_when_all_fail() -> None:
    result, _ = run_parallel(ParallelStrategy.ANY, {"a": FAIL, "b": RuntimeError("down")})
    assert not result.success
    assert result.error == "all 2 nodes failed: a: bad; b: down"


def test_parallel_node_construction() -> None:
    node = ParallelNode(nodes=[FnNode("a", double), FnNode("b", double)],
                        strategy=ParallelStrategy.ALL_SETTLED)
    assert node.node_id == "parallel(a,b)"
    with pytest.raises(shoal.InvalidOptionError):
        ParallelNode("p", [])
    with pytest.raises(shoal.InvalidOptionError, match="sets backend"):
        ParallelNode("p", [FnNode("a", double)], backend="threads")


# ------------------------------------------------------------ pipelines
def test_pipeline_chains_outputs() -> None:
    async def add_one(data: Any) -> NodeResult:
        return NodeResult(True, data + 1)

    async def times_ten(data: Any) -> NodeResult:
        return NodeResult(True, data * 10)

    a, b, c = FnNode("a", add_one), FnNode("b", times_ten), FnNode("c", add_one)
    pipeline = a | b | c
    assert isinstance(pipeline, Pipeline) and pipeline.nodes == [a, b, c]
    result = exec_node(pipeline, 1)
    assert (result.success, result.output) == (True, 21)
    assert result.metadata == {"steps": ["a", "b", "c"]}


def test_pipeline_stops_at_first_failure() -> None:
    async def fail(data: Any) -> NodeResult:
        return NodeResult(False, error=f"cannot handle {data}")

    last = FnNode("last", double)
    result = exec_node(FnNode("first", fail) | last, 5)
    assert (result.success, result.error) == (False, "cannot handle 5")
    assert result.metadata == {"failed_node": "first", "steps": ["first"]}
    assert last.started == []


def test_seed_multi_model_pipeline() -> None:
    def model(answer: str) -> Body:
        async def body(data: Any) -> NodeResult:
            return NodeResult(True, f"{answer} to {data['item']}")
        return body

    multi_model = MapNode(
        node_id="multi_model",
        child_node=ParallelNode(
            nodes=[FnNode("gpt4", model("4")), FnNode("claude", model("4")),
                   FnNode("gemini", model("four"))],
            strategy=ParallelStrategy.ALL_SETTLED,
        ),
        input_key="prompts", output_key="model_outputs", max_concurrency=3,
    )
    consensus = ReduceNode(
        node_id="find_consensus",
        reduce_fn=lambda acc, outputs: {
            "answers": [*(acc or {}).get("answers", []), [o["output"] for o in outputs]]},
        input_key="model_outputs", output_key="final_answer",
    )
    result = exec_node(multi_model | consensus, {"prompts": ["q1", "q2"]})
    assert result.success
    assert result.output["final_answer"] == {"answers": [
        ["4 to q1", "4 to q1", "four to q1"], ["4 to q2", "4 to q2", "four to q2"]]}


# ------------------------------------------------------------ processes
PROCESS_SCRIPT = textwrap.dedent(
    """
    import os
    import shoal
    from shoal.flow import BaseNode, BatchProcessor, NodeResult

    class Pid(BaseNode):
        async def execute(self, node_context, workflow_context):
            n = node_context.input_data
            if n == "boom":
                raise ValueError("exploded")
            return NodeResult(n >= 0, os.getpid(), error=None if n >= 0 else f"negative {n}")

    async def main():
        processor = BatchProcessor(Pid("pid"), max_concurrency=2, backend="processes")
        for r in await processor.batch([1, -1, "boom", 2]):
            print(r.index, r.success, r.output != os.getpid() if r.success else r.error)

    if __name__ == "__main__":
        shoal.arun(main())
    """
)


@pytest.mark.skipif(importlib.util.find_spec("shoal._backends._processes.pool") is None,
                    reason="the processes backend is not in this checkout yet")
def test_batch_processor_on_processes(tmp_path: Path) -> None:
    script = tmp_path / "pid_main.py"
    script.write_text(PROCESS_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "0 True True", "1 False negative -1", "2 False exploded", "3 True True"]
