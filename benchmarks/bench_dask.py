"""Dask backend benchmarks: shoal against named peers, on one LocalCluster, in one run.

    python benchmarks/bench_dask.py            # full sizes (about two minutes)
    python benchmarks/bench_dask.py --quick    # smaller sizes, same shape

A two-worker ``LocalCluster`` (processes, one thread each, loopback) is started
once; every peer runs on it in the same process run, interleaved, and each
figure is the median of ``--repeat`` runs (default 3).

1. CPU-bound: 400 items of ~5 ms of pure-Python work (calibrated on this
   machine). shoal ``backend="dask"`` against raw ``client.map`` +
   ``client.gather`` (target: raw / shoal >= 1.0), shoal's local processes
   backend with two workers (when this checkout has it) and a plain loop.
2. Tiny items: 1,000,000 ``x * x`` on ``backend="dask"`` (auto chunking)
   against a plain loop (target: within 3x). Raw ``client.map`` makes one
   future per item, so it runs on 20,000 items only and its time is
   extrapolated linearly to the full count (printed as such).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
from collections.abc import Callable
from typing import Any

from _timing import median_time

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
    if importlib.util.find_spec("shoal._backends._processes") is not None:
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

    def shoal_dask() -> None:
        assert shoal.map(square, items, backend="dask", address=address) == expected

    def plain() -> None:
        assert [square(x) for x in items] == expected

    raw_items = list(range(raw_count))

    def raw_dask() -> None:
        client.gather(client.map(square, raw_items, pure=False))

    loop = median_time(plain, repeat)
    dask = median_time(shoal_dask, repeat)
    raw = median_time(raw_dask, 1 if raw_count >= 20_000 else repeat)
    raw_full = raw * count / raw_count
    row("plain loop", loop, "1.00x plain loop")
    row('shoal.map backend="dask" (auto chunks)', dask, f"{dask / loop:5.2f}x plain loop "
        "(target <= 3x)")
    row(f"raw client.map, {raw_count:,} items (measured)", raw)
    row(f"raw client.map, {count:,} items (extrapolated)", raw_full,
        f"{raw_full / loop:5.0f}x plain loop, {raw_full / dask:.0f}x shoal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args()
    distributed: Any = importlib.import_module("distributed")  # untyped
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None, silence_logs=40)
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            address = cluster.scheduler_address
            if args.quick:
                bench_cpu(client, address, 100, args.repeat)
                bench_tiny(client, address, 200_000, 5_000, args.repeat)
            else:
                bench_cpu(client, address, 400, args.repeat)
                bench_tiny(client, address, 1_000_000, 20_000, args.repeat)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
