"""Behaviour of the batch nodes (shoal.nodes): Spark's node API over the engine.

Spark behaviours pinned here (learned from wensheng/spark's ``spark/nodes/nodes.py``
and its batch-processing tutorial): the class names ``BatchProcessNode``,
``SequentialNode``, ``MultipleThreadNode``, ``MultipleProcessNode`` and
``ParallelNode``; ``failure_strategy`` ``all_or_nothing`` (raise the failed
item's own exception, and start nothing after it), ``skip_failed`` and
``collect_errors`` with Spark's entry keys (``index``, ``item``, ``exception``,
``error_type``, ``error_message`` cut to 200 characters, ``item_summary``);
``{"data": [], "errors": []}`` for an empty batch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import shoal
from shoal.nodes import (
    BatchProcessNode,
    MultipleProcessNode,
    MultipleThreadNode,
    NodeOutput,
    ParallelNode,
    SequentialNode,
    item_summary,
)

HAS_PROCESSES = importlib.util.find_spec("shoal._backends._processes.pool") is not None
# Any: mypy refuses abstract classes where type[BatchProcessNode] is expected.
LOCAL_KINDS: list[Any] = [SequentialNode, MultipleThreadNode, ParallelNode]


def make_node(kind: Any, body: Any, **options: Any) -> BatchProcessNode:
    """A subclass of ``kind`` whose async process_item is ``body``."""

    class Node(kind):  # type: ignore[misc]
        async def process_item(self, item: Any) -> Any:
            return await body(item)

    node: BatchProcessNode = Node(**options)
    return node


async def square_unless_three(item: int) -> int:
    await asyncio.sleep(0)
    if item == 3:
        raise ValueError("three")
    return item * item


def run(coro: Any) -> Any:
    return shoal.arun(coro)


# ------------------------------------------------------------ basics
@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_content_in_input_order(kind: Any) -> None:
    async def body(item: int) -> int:
        await asyncio.sleep(0.001 * (5 - item))  # later items finish first
        return item * 10

    out = run(make_node(kind, body).do(range(5)))
    assert isinstance(out, NodeOutput)
    assert out.content == [0, 10, 20, 30, 40]
    assert [r.index for r in out.results] == [0, 1, 2, 3, 4]
    assert out.report is not None and out.report.total == 5


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_plain_def_process_item(kind: Any) -> None:
    class Plain(kind):  # type: ignore[misc]
        def process_item(self, item: int) -> int:
            return item + 1

    assert run(Plain().do([1, 2, 3])).content == [2, 3, 4]


def test_backend_per_class() -> None:
    for kind, name in zip(LOCAL_KINDS, ["sequential", "threads", "asyncio"], strict=True):
        out = run(make_node(kind, square_unless_three).do([1]))
        assert out.report.backend == name
    assert MultipleProcessNode.backend_name == "processes"


def test_only_process_item_is_needed_and_base_stays_abstract() -> None:
    class Minimal(SequentialNode):
        async def process_item(self, item: Any) -> Any:
            return item

    Minimal()
    with pytest.raises(TypeError):
        SequentialNode()  # type: ignore[abstract]


def test_subclass_init_without_super_uses_defaults() -> None:
    class NoSuper(MultipleThreadNode):
        def __init__(self, factor: int) -> None:
            self.factor = factor

        def process_item(self, item: int) -> int:
            return item * self.factor

    out = run(NoSuper(3).do([1, 2]))
    assert out.content == [3, 6] and out.report.backend == "threads"


# --------------------------------------------------------- failure strategies
@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_all_or_nothing_raises_first_failure(kind: Any) -> None:
    with pytest.raises(ValueError, match="three"):
        run(make_node(kind, square_unless_three).do(range(5)))


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_skip_failed_keeps_successes_in_order(kind: Any) -> None:
    node = make_node(kind, square_unless_three, failure_strategy="skip_failed")
    out = run(node.do(range(5)))
    assert out.content == [0, 1, 4, 16]
    assert [r.ok for r in out.results] == [True, True, True, False, True]


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_collect_errors_entries_have_sparks_keys(kind: Any) -> None:
    node = make_node(kind, square_unless_three, failure_strategy="collect_errors")
    assert node.failure_strategy == "collect_errors"
    out = run(node.do(range(5)))
    assert out.content["data"] == [0, 1, 4, 16]
    [entry] = out.content["errors"]
    assert entry == {
        "index": 3, "item": 3, "exception": out.results[3].error, "error_type": "ValueError",
        "error_message": "three", "item_summary": {"type": "int", "repr": "3"},
    }
    assert isinstance(entry["exception"], ValueError) and str(entry["exception"]) == "three"


def test_collect_errors_cuts_long_messages_and_summarizes_items() -> None:
    class Fails(SequentialNode):
        def process_item(self, item: Any) -> Any:
            raise KeyError("x" * 300) if isinstance(item, dict) else RuntimeError("y" * 300)

    items: list[Any] = [{"b": 1, "a": 2}, [1, 2, 3], "text", None, 2.5]
    errors = run(Fails(failure_strategy="collect_errors").do(items)).content["errors"]
    assert [e["item_summary"] for e in errors] == [
        {"type": "dict", "size": 2, "keys": ["a", "b"]},
        {"type": "list", "length": 3},
        {"type": "str", "length": 4},
        {"type": "NoneType", "value": None},
        {"type": "float", "repr": "2.5"},
    ]
    message = errors[1]["error_message"]
    assert len(message) == 200 and message == "y" * 197 + "..."
    assert str(errors[1]["exception"]) == "y" * 300  # the exception itself is whole


def test_item_summary_limits() -> None:
    assert item_summary(dict.fromkeys(range(12)))["keys"] == sorted(str(k) for k in range(12))[:10]
    assert item_summary(b"abc") == {"type": "bytes", "length": 3}
    assert item_summary(object())["repr"].startswith("<object object at")
    assert len(item_summary("z" * 1000)) == 2  # type and length, never the text

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert item_summary(BadRepr()) == {"type": "BadRepr", "repr": "<unavailable>"}


@pytest.mark.parametrize("strategy", ["all_or_nothing", "skip_failed", "collect_errors"])
def test_empty_batch_content_per_strategy(strategy: str) -> None:
    out = run(make_node(SequentialNode, square_unless_three, failure_strategy=strategy).do([]))
    assert out.content == ({"data": [], "errors": []} if strategy == "collect_errors" else [])


def started_before_failure(kind: Any, **options: Any) -> list[int]:
    """The items that started when item 2 of 50 fails under all_or_nothing."""
    started: list[int] = []
    lock = threading.Lock()

    class Record(kind):  # type: ignore[misc]
        def process_item(self, item: int) -> int:
            with lock:
                started.append(item)
            if item == 2:
                raise ValueError("two")
            return item

    with pytest.raises(ValueError, match="two"):
        run(Record(**options).do(range(50)))
    return started


def test_all_or_nothing_starts_nothing_after_the_failure_on_asyncio() -> None:
    assert started_before_failure(ParallelNode, max_workers=1) == [0, 1, 2]


@pytest.mark.parametrize(("kind", "options"), [(SequentialNode, {}),
                                               (MultipleThreadNode, {"max_workers": 1})])
def test_all_or_nothing_starts_nothing_after_the_failure(kind: Any,
                                                          options: dict[str, Any]) -> None:
    # Spark's SequentialNode breaks at the first failure; one worker must too.
    assert started_before_failure(kind, **options) == [0, 1, 2]


# ------------------------------------------------------------ max_workers
def test_max_workers_caps_threads() -> None:
    lock = threading.Lock()
    active = peak = 0
    # Items 0 and 1 must meet at the barrier: proves 2 really run together;
    # the counter proves no third one ever joins. (Only the first two wait:
    # the engine may hand later items out in chunks.)
    barrier = threading.Barrier(2, timeout=10)

    class Counting(MultipleThreadNode):
        async def process_item(self, item: int) -> int:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            if item < 2:
                barrier.wait()
            with lock:
                active -= 1
            return item

    assert run(Counting(max_workers=2).do(range(6))).content == list(range(6))
    assert peak == 2


def test_max_workers_caps_async() -> None:
    active = peak = 0

    async def main() -> list[int]:
        pair = asyncio.Event()

        class Counting(ParallelNode):
            async def process_item(self, item: int) -> int:
                nonlocal active, peak
                active += 1
                peak = max(peak, active)
                if active == 2:
                    pair.set()
                await asyncio.wait_for(pair.wait(), 10)
                await asyncio.sleep(0)
                active -= 1
                return item

        out = await Counting(max_workers=2).do(range(8))
        return out.content  # type: ignore[no-any-return]

    assert run(main()) == list(range(8))
    assert peak == 2


def test_sequential_refuses_max_workers_above_one() -> None:
    with pytest.raises(shoal.InvalidOptionError, match="one item at a time"):
        make_node(SequentialNode, square_unless_three, max_workers=2)
    make_node(SequentialNode, square_unless_three, max_workers=1)


# ------------------------------------------------- retries, timeout, options
def test_retries_are_per_item_under_threads() -> None:
    lock = threading.Lock()
    calls: dict[int, int] = {}

    class FailsOnce(MultipleThreadNode):
        def process_item(self, item: int) -> int:
            with lock:
                calls[item] = calls.get(item, 0) + 1
                first = calls[item] == 1
            if item in (1, 2) and first:
                raise ConnectionError(f"flaky {item}")
            return item

    out = run(FailsOnce(max_workers=2, retries=1).do(range(4)))
    assert out.content == [0, 1, 2, 3]
    assert [r.attempts for r in out.results] == [1, 2, 2, 1]
    assert calls == {0: 1, 1: 2, 2: 2, 3: 1}


def test_timeout_fails_the_hung_item_only() -> None:
    async def main() -> Any:
        never = asyncio.Event()

        class Hangs(ParallelNode):
            async def process_item(self, item: int) -> int:
                if item == 1:
                    await never.wait()
                return item

        return await Hangs(timeout=0.05, failure_strategy="collect_errors").do(range(3))

    out = run(main())
    assert out.content["data"] == [0, 2]
    [error] = out.content["errors"]
    assert error["index"] == 1 and error["error_type"] == "TimeoutError"


def test_engine_options_pass_through() -> None:
    events: list[Any] = []
    node = make_node(MultipleThreadNode, square_unless_three, failure_strategy="skip_failed",
                     progress=events.append, rate=1000)
    run(node.do(range(5)))
    assert events and events[-1].done == 5 and events[-1].failed == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"backend": "threads"}, "chooses the backend"),
        ({"workers": 2}, "max_workers"),
        ({"on_error": "skip_failed"}, "failure_strategy"),
        ({"failure_strategy": "ignore"}, "failure_strategy must be"),
        ({"retires": 2}, "did you mean 'retries'"),
        ({"max_workers": 0}, "workers must be"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], match: str) -> None:
    with pytest.raises(shoal.InvalidOptionError, match=match):
        make_node(MultipleThreadNode, square_unless_three, **options)


class LockedObserver:
    """A progress observer that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = False

    def on_start(self, info: Any) -> None:
        pass

    def on_results(self, results: Any) -> None:
        pass

    def on_finish(self, report: Any) -> None:
        self.finished = True


def test_process_node_ships_without_run_options() -> None:
    class Cube(MultipleProcessNode):
        offset = 0

        def process_item(self, item: int) -> int:
            return item**3 + self.offset

    node = Cube(progress=LockedObserver(), failure_strategy="skip_failed")
    node.offset = 1
    shipped = cloudpickle.loads(cloudpickle.dumps(node._item_function()))
    assert shipped(2) == 9
    assert "_shoal_config" not in vars(shipped.__self__)
    assert node._shoal_config.failure_strategy == "skip_failed"  # the node keeps them


# ------------------------------------------------------------ processes
needs_processes = pytest.mark.skipif(
    not HAS_PROCESSES, reason="the processes backend is not in this checkout yet"
)

MAIN_SCRIPT = textwrap.dedent(
    """
    import os
    import shoal
    from shoal.nodes import MultipleProcessNode

    class Cube(MultipleProcessNode):
        def __init__(self, offset, **kw):
            super().__init__(**kw)
            self.offset = offset

        async def process_item(self, item):
            return (item ** 3 + self.offset, os.getpid())

    if __name__ == "__main__":
        out = shoal.arun(Cube(1, max_workers=2).do(range(5)))
        values = [v for v, _ in out.content]
        pids = {pid for _, pid in out.content}
        print("values", values)
        print("in workers", os.getpid() not in pids)
    """
)


@needs_processes
def test_process_node_defined_in_main(tmp_path: Path) -> None:
    script = tmp_path / "cube_main.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "values [1, 2, 9, 28, 65]" in proc.stdout
    assert "in workers True" in proc.stdout
