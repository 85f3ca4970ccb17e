"""The parallel-batch workbook: sequential vs parallel runs of three workloads, as graphs.

Two graphs built from ``shoal.graph`` nodes::

    compare:   LoadData >> SplitBatch >> SequentialProcess >> ParallelProcess >> Aggregate >> Report
    parallel:  LoadData >> SplitBatch >> ParallelProcess >> Report

Workloads (data is deterministic, and every 20th item, 5%, fails on purpose so
the error counts in the report mean something):

* ``io``: a simulated call with ``latency`` seconds of waiting (threads);
* ``text``: word counts, unique words and character classes of a document;
* ``numeric``: prime factors of an 8-digit number and the primes just above it.

CPU-bound workloads run their parallel path on processes, I/O-bound ones on
threads. Each batch from ``SplitBatch`` is one engine task
(``chunk_size``), so the batch size is a real tuning knob, measured by
``benchmark``.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import shoal
from shoal import InvalidOptionError
from shoal.graph import BatchNode, Graph, MetricsNode, Node, ParallelBatchNode

__all__ = ["WORKLOADS", "BenchmarkResult", "ModeRun", "WorkbookResult", "benchmark", "compare",
           "default_workers", "parallel", "parallel_backend"]

WORKLOADS = ("io", "text", "numeric")
DEFAULT_LATENCY = 0.02  # seconds per simulated I/O call: `compare 100` takes ~2 s sequentially
FAIL_EVERY = 20  # item i fails when i % FAIL_EVERY == FAIL_AT: 5% of the items
FAIL_AT = 7
PRIME_WINDOW = 200  # numeric: numbers in [n, n + PRIME_WINDOW) tested for primality, ~8 ms
_WORDS = (
    "signal sample batch worker queue result retry timeout stream buffer packet channel "
    "latency window filter vector matrix kernel thread process socket record index value "
    "the a of and to in is for on with as by at from it that this be are was"
).split()


def _check(workload: str, n: int = 1, workers: int | None = None, latency: float = 0.0) -> None:
    if workload not in WORKLOADS:
        choices = ", ".join(WORKLOADS)
        raise InvalidOptionError(f"unknown workload {workload!r}; choose one of {choices}")
    for name, value in (("the number of items", n), ("workers", 1 if workers is None else workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidOptionError(f"{name} must be a whole number >= 1, got {value!r}")
    if not latency >= 0:
        raise InvalidOptionError(f"latency must be >= 0 seconds, got {latency!r}")


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    return len(sched_getaffinity(0)) if sched_getaffinity else os.cpu_count() or 1


def default_workers(workload: str) -> int:
    """I/O-bound: 4 workers per core (at least 8, at most 32); CPU-bound: one per core."""
    cpus = cpu_count()
    return min(32, max(8, 4 * cpus)) if workload == "io" else cpus


def parallel_backend(workload: str) -> str:
    """Threads for I/O-bound work, processes for CPU-bound work."""
    return "threads" if workload == "io" else "processes"


def batch_size_for(n: int, workers: int, workload: str) -> int:
    """I/O items cost the same: one batch per worker. CPU items vary: ~4 batches per worker."""
    per_worker = 1 if workload == "io" else 4
    return max(1, math.ceil(n / (workers * per_worker)))


# --- the workloads (module level, so that process workers can import them) ---------------


def make_items(workload: str, n: int) -> list[dict[str, Any]]:
    """``n`` deterministic items of ``workload``; those with id % 20 == 7 are bad on purpose."""
    rng = random.Random(f"shoal-workbook-{workload}")
    items: list[dict[str, Any]] = []
    for i in range(n):
        bad = i % FAIL_EVERY == FAIL_AT
        if workload == "io":
            items.append({"id": i, "value": rng.randint(1, 1000), "bad": bad})
        elif workload == "text":
            words = rng.choices(_WORDS, k=rng.randint(1500, 2500))
            items.append({"id": i, "text": "" if bad else " ".join(words).capitalize() + "."})
        else:
            items.append({"id": i, "n": -1 if bad else rng.randrange(10**7, 10**8)})
    return items


def _io(item: dict[str, Any], latency: float) -> dict[str, Any]:
    time.sleep(latency)  # the simulated remote call (a workload, not synchronization)
    if item["bad"]:
        raise ConnectionError(f"simulated service error for item {item['id']}")
    return {"id": item["id"], "value": item["value"], "square": item["value"] ** 2}


def _text(item: dict[str, Any]) -> dict[str, Any]:
    text: str = item["text"]
    if not text:
        raise ValueError(f"document {item['id']} is empty")
    words = [w.strip(".,").lower() for w in text.split()]
    counts = Counter(words)
    return {
        "id": item["id"], "words": len(words), "unique_words": len(counts),
        "top_word": min(counts, key=lambda w: (-counts[w], w)),
        "chars": len(text), "letters": sum(c.isalpha() for c in text),
        "vowels": sum(c in "aeiouAEIOU" for c in text), "spaces": text.count(" "),
    }


def _factors(n: int) -> list[int]:
    """Prime factors by trial division (n >= 2): the CPU-bound part of ``numeric``."""
    out, d = [], 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1 if d == 2 else 2
    return [*out, n] if n > 1 else out


def _numeric(item: dict[str, Any]) -> dict[str, Any]:
    n: int = item["n"]
    if n < 2:
        raise ValueError(f"item {item['id']}: {n} has no prime factorization")
    factors = _factors(n)
    primes = sum(_factors(k) == [k] for k in range(n, n + PRIME_WINDOW))
    return {"id": item["id"], "n": n, "is_prime": factors == [n], "factors": factors,
            "primes_in_window": primes}


def process_item(workload: str, item: dict[str, Any], latency: float = DEFAULT_LATENCY) -> Any:
    """Run one item of ``workload``.

    Raises:
        ConnectionError: io, a bad item.
        ValueError: text or numeric, a bad item.
    """
    if workload == "io":
        return _io(item, latency)
    return _text(item) if workload == "text" else _numeric(item)


# --- the nodes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What one run of a graph is asked to do (``shared["config"]``)."""

    n: int
    workload: str
    workers: int
    latency: float
    backend: str
    batch_size: int | None = None  # None: SplitBatchNode decides
    progress: Any = False


class LoadDataNode(Node):
    """Generates the deterministic test data of the configured workload."""

    def prep(self, shared: dict[str, Any]) -> Config:
        config: Config = shared["config"]
        return config

    def exec(self, prep_res: Config) -> list[dict[str, Any]]:
        return make_items(prep_res.workload, prep_res.n)

    def post(self, shared: dict[str, Any], prep_res: Config, exec_res: Any) -> None:
        shared["items"] = exec_res
        shared["data_type"] = "text" if prep_res.workload == "text" else "numbers"


class SplitBatchNode(Node):
    """Chooses the batch size from items, workers and workload, and splits the items."""

    def prep(self, shared: dict[str, Any]) -> tuple[list[Any], Config]:
        return shared["items"], shared["config"]

    def exec(self, prep_res: tuple[list[Any], Config]) -> list[list[Any]]:
        items, cfg = prep_res
        size = cfg.batch_size or batch_size_for(len(items), cfg.workers, cfg.workload)
        return shoal.split(items, batch_size=size)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[list[Any]]) -> None:
        shared["batches"] = exec_res
        shared["batch_size"] = len(exec_res[0]) if exec_res else 0


@dataclass
class ModeRun:
    """One processing mode's outcome: wall time and one result per item (errors included)."""

    seconds: float
    results: list[dict[str, Any]]
    workers: int = 1
    backend: str = "sequential"

    @property
    def errors(self) -> int:
        return sum("error" in r for r in self.results)

    @property
    def throughput(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else math.inf


class _ProcessMixin(MetricsNode, BatchNode):
    """Shared by both processing nodes: run every item, record a failure as a result."""

    mode = ""

    def prep(self, shared: dict[str, Any]) -> list[Any]:
        self.config: Config = shared["config"]
        self._started = time.perf_counter()
        return shoal.merge(shared["batches"])

    def exec(self, item: dict[str, Any]) -> Any:
        return process_item(self.config.workload, item, self.config.latency)

    def exec_fallback(self, item: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        return {"id": item["id"], "error": f"{type(exc).__name__}: {exc}"}

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        opts = self.engine_options()
        shared[self.mode] = ModeRun(time.perf_counter() - self._started, exec_res,
                                    opts.get("workers") or 1, opts["backend"])


class SequentialProcessNode(_ProcessMixin):
    """Every item, one after another, on the calling thread."""

    mode = "sequential"


class ParallelProcessNode(_ProcessMixin, ParallelBatchNode):
    """Every item on the engine's workers; each batch from ``SplitBatchNode`` is one task."""

    mode = "parallel"

    def prep(self, shared: dict[str, Any]) -> list[Any]:
        self._chunk = max(1, shared["batch_size"])
        return super().prep(shared)

    def engine_options(self) -> dict[str, Any]:
        return {**super().engine_options(), "chunk_size": getattr(self, "_chunk", 1)}


class AggregateNode(Node):
    """Compares the two modes: speedup, efficiency and whether the results match."""

    def prep(self, shared: dict[str, Any]) -> tuple[ModeRun, ModeRun]:
        return shared["sequential"], shared["parallel"]

    def exec(self, prep_res: tuple[ModeRun, ModeRun]) -> dict[str, Any]:
        seq, par = prep_res
        speedup = seq.seconds / par.seconds if par.seconds > 0 else math.inf
        return {"speedup": speedup, "efficiency": speedup / par.workers,
                "match": seq.results == par.results}

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: dict[str, Any]) -> None:
        shared["comparison"] = exec_res


class ReportNode(Node):
    """Builds the ``WorkbookResult`` (and so the text report) from ``shared``."""

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared

    def exec(self, prep_res: dict[str, Any]) -> WorkbookResult:
        s = prep_res
        cfg: Config = s["config"]
        return WorkbookResult(cfg.workload, s["data_type"], len(s["items"]), s["batch_size"],
                              len(s["batches"]), cfg.latency, s["parallel"], s.get("sequential"),
                              s.get("comparison", {}))

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: WorkbookResult) -> None:
        shared["result"] = exec_res


def compare_graph(cfg: Config) -> Graph:
    """LoadData >> SplitBatch >> SequentialProcess >> ParallelProcess >> Aggregate >> Report."""
    graph = Graph()
    graph.start(LoadDataNode(node_id="load")) >> SplitBatchNode(node_id="split") \
        >> SequentialProcessNode(node_id="sequential") >> _parallel_node(cfg) \
        >> AggregateNode(node_id="aggregate") >> ReportNode(node_id="report")
    return graph


def parallel_graph(cfg: Config) -> Graph:
    """LoadData >> SplitBatch >> ParallelProcess >> Report."""
    graph = Graph()
    graph.start(LoadDataNode(node_id="load")) >> SplitBatchNode(node_id="split") \
        >> _parallel_node(cfg) >> ReportNode(node_id="report")
    return graph


def _parallel_node(cfg: Config) -> ParallelProcessNode:
    return ParallelProcessNode(max_workers=cfg.workers, backend=cfg.backend,
                               progress=cfg.progress, node_id="parallel")


# --- results and reports --------------------------------------------------------------


@dataclass
class WorkbookResult:
    """What ``compare`` or ``parallel`` measured; ``render()`` is the text report."""

    workload: str
    data_type: str
    total: int
    batch_size: int
    batches: int
    latency: float
    parallel: ModeRun
    sequential: ModeRun | None = None
    comparison: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return float(self.comparison.get("speedup", math.nan))

    @property
    def results_match(self) -> bool:
        return bool(self.comparison.get("match", False))

    def _conclusion(self) -> str:
        if not self.results_match:
            return "Results differ between the modes: look for shared state or non-determinism."
        x, backend = self.speedup, self.parallel.backend
        if x >= 2:
            return f"Parallel processing provided significant speedup ({x:.1f}x faster)!"
        if x >= 1.1:
            return f"Parallel processing provided a modest speedup ({x:.1f}x faster)."
        return (f"Parallel processing gave no speedup ({x:.2f}x) on {backend}: the items are "
                "too small or CPU-bound for this backend; try fewer workers or processes.")

    def render(self) -> str:
        """The seed's "Parallel Batch Processing Performance Report" (or the parallel-only one)."""
        par, seq = self.parallel, self.sequential
        title = "Parallel Batch Processing " + ("Performance Report" if seq else "Report")
        lines = [title, "=" * len(title), "", "Data Summary:",
                 f"- Total items: {self.total}", f"- Data type: {self.data_type}",
                 f"- Batch size: {self.batch_size}", f"- Number of batches: {self.batches}",
                 f"- Workload: {self.workload}"
                 + (f" ({self.latency:g}s simulated latency per item)" if self.workload == "io"
                    else ""),
                 "", "Performance Results:"]
        if seq is not None:
            lines.append(f"- Sequential processing time: {seq.seconds:.2f}s")
        lines.append(f"- Parallel processing time: {par.seconds:.2f}s")
        if seq is not None:
            lines += [f"- Speedup: {self.speedup:.2f}x",
                      f"- Efficiency: {self.comparison['efficiency']:.1%}"]
        lines += [f"- Workers: {par.workers} ({par.backend})", "", "Throughput:"]
        if seq is not None:
            lines.append(f"- Sequential: {seq.throughput:.1f} items/sec")
        lines += [f"- Parallel: {par.throughput:.1f} items/sec", ""]
        if seq is not None:
            mark = "✓" if self.results_match else "✗"
            lines += ["Correctness:", f"- Results match: {mark}",
                      f"- Sequential errors: {seq.errors}", f"- Parallel errors: {par.errors}",
                      "", "Conclusion:", self._conclusion()]
        else:
            lines += ["Errors:", f"- Parallel errors: {par.errors}"]
        return "\n".join(lines)


def _run(make_graph: Callable[[Config], Graph], n: int, workers: int | None, workload: str,
         latency: float, backend: str | None, batch_size: int | None,
         progress: Any) -> WorkbookResult:
    _check(workload, n, workers, latency)
    cfg = Config(n, workload, workers or default_workers(workload), latency,
                 backend or parallel_backend(workload), batch_size, progress)
    shared: dict[str, Any] = {"config": cfg}
    make_graph(cfg).run(shared)
    result: WorkbookResult = shared["result"]
    return result


def compare(n: int, workers: int | None = None, workload: str = "io", *,
            latency: float = DEFAULT_LATENCY, backend: str | None = None,
            batch_size: int | None = None, progress: Any = False) -> WorkbookResult:
    """Run ``n`` items sequentially, then in parallel, and compare (the compare graph).

    Args:
        n: number of items.
        workers: parallel workers (default: ``default_workers(workload)``).
        workload: ``"io"``, ``"text"`` or ``"numeric"``.
        latency: seconds per simulated I/O call (``io`` only).
        backend: the parallel path's backend (default: ``parallel_backend(workload)``).
        batch_size: items per engine task (default: ``SplitBatchNode``'s choice).
        progress: the engine's ``progress`` option for the parallel path.

    Raises:
        InvalidOptionError: an unknown workload, or a bad count or latency.
    """
    return _run(compare_graph, n, workers, workload, latency, backend, batch_size, progress)


def parallel(n: int, workers: int | None = None, workload: str = "io", *,
             latency: float = DEFAULT_LATENCY, backend: str | None = None,
             batch_size: int | None = None, progress: Any = False) -> WorkbookResult:
    """Run ``n`` items in parallel only (the parallel graph); arguments as ``compare``.

    Raises:
        InvalidOptionError: an unknown workload, or a bad count or latency.
    """
    return _run(parallel_graph, n, workers, workload, latency, backend, batch_size, progress)


# --- benchmark ------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """The scenarios' results and the tuning sweeps; ``render()`` prints the table."""

    rows: list[tuple[str, WorkbookResult]]
    notes: list[str]

    def render(self) -> str:
        head = (f"{'Scenario':<20}{'Items':>7}{'Workers':>18}{'Sequential':>12}"
                f"{'Parallel':>10}{'Speedup':>9}{'Errors':>8}  Match")
        lines = ["Parallel Batch Processing Benchmark", "=" * len(head), head, "-" * len(head)]
        for name, r in self.rows:
            seq = r.sequential
            assert seq is not None
            workers = f"{r.parallel.workers} {r.parallel.backend}"
            lines.append(
                f"{name:<20}{r.total:>7}{workers:>18}{seq.seconds:>11.2f}s"
                f"{r.parallel.seconds:>9.2f}s{r.speedup:>8.2f}x{r.parallel.errors:>8}  "
                + ("✓" if r.results_match else "✗")
            )
        return "\n".join([*lines, "", *self.notes])


def _scenarios(scale: float) -> list[tuple[str, str, int, float]]:
    def size(n: int) -> int:
        return max(4, round(n * scale))

    return [("Small I/O-bound", "io", size(40), 0.01), ("Large I/O-bound", "io", size(300), 0.01),
            ("Text processing", "text", size(200), 0.0), ("Numeric (CPU-bound)", "numeric",
                                                          size(80), 0.0)]


def _tune(kind: str, workload: str, n: int, latency: float, counts: Sequence[int]) -> list[str]:
    """Sweep worker counts, then batch sizes at the best count; say which was fastest."""

    def timed(workers: int, size: int) -> tuple[int, int, float]:
        start = time.perf_counter()
        parallel(n, workers, workload, latency=latency, batch_size=size)
        return workers, size, time.perf_counter() - start

    cpus = cpu_count()
    by_workers = [timed(w, batch_size_for(n, w, workload)) for w in sorted(set(counts))]
    best_w = min(by_workers, key=lambda t: t[2])[0]
    sizes = sorted({1, 2, 4, batch_size_for(n, best_w, workload), math.ceil(n / best_w)})
    by_size = [timed(best_w, s) for s in sizes]
    best_s = min(by_size, key=lambda t: t[2])[1]
    tried_w = ", ".join(f"{w} ({t:.2f}s)" for w, _, t in by_workers)
    tried_s = ", ".join(f"{s} ({t:.2f}s)" for _, s, t in by_size)
    return [
        f"Optimal batch size ({kind}, {n} items, {best_w} workers): {best_s} items"
        f" per batch; tried {tried_s}",
        f"Worker recommendation ({kind}): {best_w} worker{'s' * (best_w != 1)} on"
        f" {parallel_backend(workload)} = {best_w / cpus:g}x {cpus} cores (fastest of {tried_w})",
    ]


def benchmark(workload: str | None = None, *, scale: float = 1.0) -> BenchmarkResult:
    """Run the seed's four scenarios (or those of one workload) and tune workers and batches.

    Args:
        workload: only the scenarios of this workload (default: all four).
        scale: multiply every scenario's item count (tests use a small one).

    Raises:
        InvalidOptionError: an unknown workload or a scale <= 0.
    """
    if workload is not None:
        _check(workload)
    if not scale > 0:
        raise InvalidOptionError(f"scale must be > 0, got {scale!r}")
    rows = [(name, compare(n, None, w, latency=lat)) for name, w, n, lat in _scenarios(scale)
            if workload in (None, w)]
    notes = ["Rules of thumb: I/O-bound 2-4x cores, CPU-bound 1x cores; measured here:"]
    if workload in (None, "io"):
        cpus = cpu_count()
        notes += _tune("I/O-bound", "io", max(8, round(120 * scale)), 0.01,
                       (cpus, 2 * cpus, 4 * cpus))
    for w in ("numeric", "text"):
        if workload in (None, w):
            notes += _tune("CPU-bound", w, max(8, round(60 * scale)), 0.0,
                           (1, cpu_count(), 2 * cpu_count()))
            break
    return BenchmarkResult(rows, notes)
