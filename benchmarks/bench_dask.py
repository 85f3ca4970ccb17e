"""Dask backend benchmarks: shoal against named peers, on one LocalCluster, in one run.

    python benchmarks/bench_dask.py            # full sizes (about two minutes)
    python benchmarks/bench_dask.py --quick    # smaller sizes, same shape
    python benchmarks/bench_dask.py --only tiny --repeat 9   # one part, more rounds

A two-worker ``LocalCluster`` (processes, one thread each, loopback) is started
once, before any timing (its start-up, printed, is in no figure); every peer
runs on it in the same process run, and each figure is the median of
``--repeat`` runs (default 3). Every timed call includes checking its result
against the expected list, the plain loop's too.

1. CPU-bound: 400 items of ~5 ms of pure-Python work (calibrated on this
   machine). shoal ``backend="dask"`` against raw ``client.map`` +
   ``client.gather`` (target: raw / shoal >= 1.0), shoal's local processes
   backend with two workers (when this checkout has it) and a plain loop.
2. Tiny items: 1,000,000 ``x * x`` on ``backend="dask"`` (auto chunking)
   against a plain loop (target: within 3x), in rounds of one call each
   (loop, then each shoal call) so that load on the machine hits all alike.
   ``address=`` is the plain call: the bench's own client is not the
   process's default (``set_as_default=False``), so shoal does not find a
   client for that address and each run connects a new one to the scheduler
   (inside the figure) and closes it; shoal returns once the results are in
   and finishes the closing (about 10 ms, mostly waiting on the scheduler)
   on a thread of its own, so that part overlaps the next timed call.
   ``backend_options={"client": ...}`` reuses the bench's open client (as
   ``address=`` would with a default client for that address).
   The input is ``range(n)``, which shoal slices (a chunk pickles in a few
   bytes); the line ``address=, list input`` passes ``list(range(n))``, whose
   items are pulled and pickled one by one, for comparison.
   Raw ``client.map`` makes one future per item, so it runs on 20,000 items
   only and its time is extrapolated linearly to the full count (printed as
   such).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import Any

from _timing import median_time, timed

import shoal


def burn(n: int) -> int:
    """Pure-Python CPU work; ``n`` is calibrated to take about 5 ms."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def square(x: int) -> int:
    return x * x


def calibrate(seconds: float) -> int:
    """The ``n`` for which ``burn(n)`` takes about ``seconds`` here."""
    n = 10_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        took = time.perf_counter() - t0
        if took > 0.02:
            return max(1, int(n * seconds / took))
        n *= 2


def row(name: str, seconds: float, note: str = "") -> None:
    print(f"  {name:<46} {seconds:8.3f} s  {note}")


def bench_cpu(client: Any, address: str, count: int, repeat: int) -> None:
    n = calibrate(0.005)
    items = [n] * count
    print(f"\n1. CPU-bound: {count} items of ~5 ms (burn({n})), 2 workers x 1 thread")
    expected = [burn(n)] * count

    def shoal_dask() -> None:
        assert shoal.map(burn, items, backend="dask", address=address) == expected

    def raw_dask() -> None:
        assert client.gather(client.map(burn, items, pure=False)) == expected

    def plain() -> None:
        assert [burn(x) for x in items] == expected

    peers: list[tuple[str, Callable[[], None]]] = [
        ('shoal.map backend="dask"', shoal_dask),
        ("raw client.map + client.gather", raw_dask),
    ]
    if importlib.util.find_spec("shoal._backends._processes.pool") is not None:
        def shoal_processes() -> None:
            assert shoal.map(burn, items, backend="processes", workers=2) == expected

        peers.append(('shoal.map backend="processes", 2 workers', shoal_processes))
    else:
        print("  shoal processes backend: not in this checkout, skipped")
    peers.append(("plain loop (sequential)", plain))
    times = {name: median_time(fn, repeat) for name, fn in peers}
    shoal_time = times['shoal.map backend="dask"']
    for name, seconds in times.items():
        row(name, seconds, f"{seconds / shoal_time:5.2f}x shoal dask time")
    raw = times["raw client.map + client.gather"]
    print(f"  ratio raw client.map / shoal dask = {raw / shoal_time:.2f} (target >= 1.0)")


def bench_tiny(client: Any, address: str, count: int, raw_count: int, repeat: int) -> None:
    print(f"\n2. Tiny items: {count:,} x * x")
    items = range(count)
    expected = [x * x for x in items]

    def plain() -> None:
        assert [square(x) for x in items] == expected

    def shoal_address() -> None:
        assert shoal.map(square, items, backend="dask", address=address) == expected

    def shoal_client() -> None:
        assert shoal.map(square, items, backend="dask",
                         backend_options={"client": client}) == expected

    listed = list(items)  # a list is pulled and pickled item by item; a range is sliced

    def shoal_list() -> None:
        assert shoal.map(square, listed, backend="dask", address=address) == expected

    raw_items = list(range(raw_count))

    def raw_dask() -> None:
        client.gather(client.map(square, raw_items, pure=False))

    shoal_address()  # warm-up: the workers import shoal and unpickle square once
    rounds = [(timed(plain), timed(shoal_address), timed(shoal_client), timed(shoal_list))
              for _ in range(repeat)]
    loop, by_address, by_client, by_list = (
        statistics.median(col) for col in zip(*rounds, strict=True))
    raw = median_time(raw_dask, 1 if raw_count >= 20_000 else repeat)
    raw_full = raw * count / raw_count

    def spread(k: int) -> str:
        ratios = sorted(r[k] / r[0] for r in rounds)
        return f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"

    row("plain loop", loop, "1.00x plain loop")
    row('shoal.map backend="dask", address=', by_address,
        f"{by_address / loop:5.2f}x plain loop (target <= 3x) {spread(1)}")
    row('shoal.map backend="dask", open client', by_client,
        f"{by_client / loop:5.2f}x plain loop {spread(2)}")
    row('shoal.map backend="dask", address=, list input', by_list,
        f"{by_list / loop:5.2f}x plain loop {spread(3)}")
    row(f"raw client.map, {raw_count:,} items (measured)", raw)
    row(f"raw client.map, {count:,} items (extrapolated)", raw_full,
        f"{raw_full / loop:5.0f}x plain loop, {raw_full / by_address:.0f}x shoal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--only", choices=["cpu", "tiny"], help="run one part only")
    args = parser.parse_args()
    distributed: Any = importlib.import_module("distributed")  # untyped
    started = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None, silence_logs=40)
    print(f"LocalCluster started in {time.perf_counter() - started:.2f} s (not in any figure)")
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            address = cluster.scheduler_address
            cpu_count, tiny_count, raw_count = (100, 200_000, 5_000) if args.quick else (
                400, 1_000_000, 20_000)
            if args.only in (None, "cpu"):
                bench_cpu(client, address, cpu_count, args.repeat)
            if args.only in (None, "tiny"):
                bench_tiny(client, address, tiny_count, raw_count, args.repeat)
    finally:
        close_quietly(cluster)


def close_quietly(cluster: Any) -> None:
    """Workers first, while the scheduler still answers their heartbeats.

    Closing the scheduler under live workers can race a heartbeat, which
    then logs a ``CommClosedError`` traceback on stderr.
    """
    cluster.scale(0)
    deadline = time.monotonic() + 30
    while cluster.scheduler_info.get("workers") and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.close()


if __name__ == "__main__":
    main()
