"""The one chunk policy (``ChunkPolicy``), with each backend's parameters. Pure: no clock."""

from __future__ import annotations

import pytest

from shoal._backends._processes.pool import ProcessBackend
from shoal._backends._threads import ThreadBackend
from shoal._core import planner
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._policies.chunking import ChunkParams, ChunkPolicy

PROCESSES = ProcessBackend.traits.chunking
THREADS = ThreadBackend.traits.chunking


def policy(params: ChunkParams | None, workers: int = 2, total: int | None = None,
           **kw: object) -> ChunkPolicy:
    return ChunkPolicy(params, workers=workers, total=total, **kw)  # type: ignore[arg-type]


def test_grows_from_one_item_straight_to_the_floor_then_boundedly() -> None:
    sizer = policy(PROCESSES)
    assert sizer.size == 1
    sizes = []
    for _ in range(6):
        sizer.observe(sizer.size, sizer.size * 1e-6, pulled=0)
        sizes.append(sizer.size)
    # straight to 2 ms of measured work, then 8-fold at most, up to ~20 ms of work
    assert sizes == [2000, 16000, 20000, 20000, 20000, 20000]


def test_a_slow_first_item_grows_slowly() -> None:
    sizer = policy(PROCESSES)
    sizer.observe(1, 0.001, pulled=0)  # 1 ms: a 2 ms chunk is 2 items, 8-fold is 8
    assert sizer.size == 8


def test_chunks_stay_within_the_frame_budget() -> None:
    params = ChunkParams(0.02, 0.002, max_items=1 << 20, max_bytes=80_000)
    sizer = policy(params)
    sizer.observe(1000, 1000 * 1e-7, pulled=0, item_bytes=8.0)
    assert sizer.size == 10_000  # 20 ms would be 200,000 items, but 80 kB / 8 bytes


def test_keeps_chunks_per_worker_of_what_remains() -> None:
    sizer = policy(PROCESSES, total=1000)
    sizer.size = 500
    sizer.observe(10, 10 * 100e-6, pulled=200)  # 100 us per item: 20 ms is 200 items
    assert sizer.size == 100  # but 800 left / (4 chunks x 2 workers)
    sizer.observe(10, 10 * 100e-6, pulled=990)
    assert sizer.size == 20  # 10 left, but never below 2 ms of work


def test_slow_items_get_small_chunks() -> None:
    sizer = policy(PROCESSES, total=400)
    sizer.observe(1, 0.005, pulled=2)
    assert sizer.size == 4  # 20 ms / 5 ms


@pytest.mark.parametrize(("workers", "cap"), [(1, 16384), (4, 4096), (32, 1024)])
def test_one_item_cap_is_shared_among_the_workers(workers: int, cap: int) -> None:
    """Tiny items grow chunks, but chunks x workers stays bounded (memory)."""
    sizer = policy(THREADS, workers=workers)
    for _ in range(10):
        sizer.observe(sizer.size, sizer.size * 1e-8, pulled=0)  # 10 ns an item
    assert sizer.size == cap


def test_the_limit_bounds_every_size() -> None:
    """A rate burst (or a timeout's one item) caps a chunk, however fast items are."""
    sizer = policy(THREADS, limit=5)
    for _ in range(5):
        sizer.observe(sizer.size, sizer.size * 1e-8, pulled=0)
    assert sizer.size == 5


def test_a_fixed_size_never_changes() -> None:
    sizer = policy(THREADS, fixed=7)
    assert not sizer.observe(7, 7e-8, pulled=0)
    assert sizer.size == 7


def test_without_parameters_a_chunk_is_one_item() -> None:
    sizer = policy(None)
    assert not sizer.observe(100, 1e-6, pulled=0)
    assert sizer.size == 1


# ---------------------------------------------------------- the planner's limits
def opts(**kw: object) -> Options:
    return Options.from_kwargs("collect_errors", kw)


def test_default_chunks_respect_the_rate_burst_on_every_chunking_backend() -> None:
    for traits in (ThreadBackend.traits, ProcessBackend.traits):
        plan = planner.plan(opts(rate=100), traits, total=300)
        for _ in range(5):
            plan.chunks.observe(plan.chunks.size, plan.chunks.size * 1e-7, pulled=0)
        assert plan.chunks.size == 1  # the default burst is 1


def test_a_timeout_keeps_one_item_per_chunk_where_a_chunk_cannot_be_cut() -> None:
    plan = planner.plan(opts(timeout=1), ThreadBackend.traits, total=None)
    plan.chunks.observe(1, 1e-7, pulled=0)
    assert plan.chunks.size == 1
    streaming = planner.plan(opts(timeout=1), ProcessBackend.traits, total=None)
    streaming.chunks.observe(1, 1e-7, pulled=0)
    assert streaming.chunks.size > 1  # processes report item by item under a timeout


def test_a_chunk_size_beyond_the_burst_is_refused_before_anything_runs() -> None:
    with pytest.raises(InvalidOptionError, match=r"chunk_size=8 .* burst \(2\)"):
        planner.check(opts(rate=(10, 2), chunk_size=8), ThreadBackend.traits)


def test_the_window_grows_with_chunks_unless_the_caller_set_it() -> None:
    rule = planner.window_rule(opts(), ThreadBackend.traits, workers=4)
    assert rule(1) == 64 and rule(100) == 1600
    fixed = planner.window_rule(opts(max_in_flight=10), ThreadBackend.traits, workers=4)
    assert fixed(100) == 10
