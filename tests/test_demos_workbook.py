"""The workbook demo (shoal.demos.workbook): graphs, workloads, reports, benchmark."""

from __future__ import annotations

from typing import Any

import pytest

from shoal import InvalidOptionError, ProgressEvent
from shoal.demos.workbook import (
    WORKLOADS,
    Config,
    ModeRun,
    WorkbookResult,
    batch_size_for,
    benchmark,
    compare,
    compare_graph,
    default_workers,
    make_items,
    parallel,
    parallel_backend,
    parallel_graph,
    process_item,
)
from shoal.graph import BaseNode

SECTIONS = ("Data Summary:", "Performance Results:", "Throughput:", "Correctness:",
            "Conclusion:")


def node_names(start: BaseNode | None) -> list[str]:
    assert start is not None, "the graph has no start node"
    names, node = [], start
    while True:
        names.append(type(node).__name__)
        if "default" not in node.successors:
            return names
        node = node.successors["default"]


def test_graph_shapes_follow_the_seed() -> None:
    cfg = Config(10, "io", 2, 0.0, "threads")
    assert node_names(compare_graph(cfg).start_node) == [
        "LoadDataNode", "SplitBatchNode", "SequentialProcessNode", "ParallelProcessNode",
        "AggregateNode", "ReportNode"]
    assert node_names(parallel_graph(cfg).start_node) == [
        "LoadDataNode", "SplitBatchNode", "ParallelProcessNode", "ReportNode"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_items_are_deterministic_and_five_percent_fail(workload: str) -> None:
    items = make_items(workload, 40)
    assert items == make_items(workload, 40)
    failed = []
    for item in items:
        try:
            process_item(workload, item, latency=0.0)
        except (ValueError, ConnectionError):
            failed.append(item["id"])
    assert failed == [7, 27]


def test_workload_results() -> None:
    text = process_item("text", {"id": 0, "text": "The cat saw the dog."})
    assert (text["words"], text["unique_words"], text["top_word"]) == (5, 4, "the")
    assert text["letters"] == 15 and text["chars"] == 20
    num = process_item("numeric", {"id": 1, "n": 360})
    assert num["factors"] == [2, 2, 2, 3, 3, 5] and num["is_prime"] is False
    assert process_item("numeric", {"id": 2, "n": 97})["is_prime"] is True
    assert process_item("io", {"id": 3, "value": 12, "bad": False}, 0.0)["square"] == 144


def test_defaults_follow_the_rules_of_thumb() -> None:
    assert default_workers("io") >= 8
    assert default_workers("numeric") == default_workers("text") >= 1
    assert parallel_backend("io") == "threads"
    assert parallel_backend("numeric") == "processes" and parallel_backend("io") == "threads"
    assert batch_size_for(200, 8, "io") == 25  # the seed's example: 8 batches of 25
    assert batch_size_for(100, 2, "numeric") == 13


def test_compare_io_report() -> None:
    result = compare(20, 4, "io", latency=0.002)
    text = result.render()
    assert text.startswith("Parallel Batch Processing Performance Report\n=====")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for line in ("- Total items: 20", "- Data type: numbers", "- Batch size: 5",
                 "- Number of batches: 4", "- Results match: ✓", "- Sequential errors: 1",
                 "- Parallel errors: 1", "- Workers: 4 (threads)"):
        assert line in text, line
    assert result.results_match
    assert result.sequential is not None and result.sequential.errors == 1
    assert result.speedup > 0
    assert f"- Efficiency: {result.speedup / 4:.1%}" in text


@pytest.mark.parametrize("workload", ["text", "numeric"])
def test_compare_cpu_workloads_match(workload: str) -> None:
    result = compare(12, 2, workload)
    assert result.results_match
    assert result.parallel.backend == parallel_backend(workload)
    assert result.parallel.errors == 1
    assert f"- Data type: {'text' if workload == 'text' else 'numbers'}" in result.render()


def test_parallel_only_report_and_progress() -> None:
    events: list[ProgressEvent] = []
    result = parallel(10, 2, "io", latency=0.0, progress=events.append)
    text = result.render()
    assert text.startswith("Parallel Batch Processing Report\n")
    assert "- Parallel errors: 1" in text and "Correctness:" not in text
    assert "Sequential" not in text
    assert events and events[-1].done == 10


def test_explicit_batch_size_and_backend() -> None:
    result = parallel(9, 3, "io", latency=0.0, batch_size=2, backend="sequential")
    assert (result.batch_size, result.batches, result.parallel.backend) == (2, 5, "sequential")


@pytest.mark.parametrize("kwargs", [
    {"n": 0}, {"n": 5, "workers": 0}, {"n": 5, "workload": "gpu"}, {"n": 5, "latency": -1.0},
])
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        compare(**kwargs)


def _result(seq_s: float, par_s: float, match: bool) -> WorkbookResult:
    seq = ModeRun(seq_s, [{"id": 0}], 1, "sequential")
    par = ModeRun(par_s, [{"id": 0}], 4, "threads")
    speedup = seq_s / par_s
    return WorkbookResult("io", "numbers", 1, 1, 1, 0.0, par, seq,
                          {"speedup": speedup, "efficiency": speedup / 4, "match": match})


@pytest.mark.parametrize(("seq_s", "par_s", "match", "conclusion"), [
    (10.0, 1.0, True, "Parallel processing provided significant speedup (10.0x faster)!"),
    (1.5, 1.0, True, "Parallel processing provided a modest speedup (1.5x faster)."),
    (1.0, 1.0, True, "Parallel processing gave no speedup (1.00x) on threads"),
    (10.0, 1.0, False, "Results differ between the modes"),
])
def test_conclusions(seq_s: float, par_s: float, match: bool, conclusion: str) -> None:
    text = _result(seq_s, par_s, match).render()
    assert conclusion in text
    assert ("- Results match: ✓" if match else "- Results match: ✗") in text


def test_benchmark_io_table_and_recommendations() -> None:
    text = benchmark("io", scale=0.05).render()
    lines = text.splitlines()
    assert lines[0] == "Parallel Batch Processing Benchmark"
    assert any(line.startswith("Small I/O-bound") for line in lines)
    assert any(line.startswith("Large I/O-bound") for line in lines)
    assert not any(line.startswith("Text processing") for line in lines)
    assert any(line.startswith("Optimal batch size (I/O-bound") for line in lines)
    assert any(line.startswith("Worker recommendation (I/O-bound)") for line in lines)


def test_benchmark_cpu_recommendation() -> None:
    text = benchmark("numeric", scale=0.1).render()
    assert "Numeric (CPU-bound)" in text
    rec = next(line for line in text.splitlines() if line.startswith("Worker recommendation"))
    assert "(CPU-bound)" in rec and "cores (fastest of 1 (" in rec


def test_benchmark_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidOptionError):
        benchmark("gpu")
    with pytest.raises(InvalidOptionError):
        benchmark(scale=0)
