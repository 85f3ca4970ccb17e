"""Split items into batches, run one Dask task per batch, merge the results.

The "batch splitting" workflow: a cluster that starts one task per item pays
the start-up cost of a task for every item, so the items are split into at
most m batches, each batch is processed as one task, and the processed
batches are merged back into one flat list, in order.

With shoal the three cells are three calls: ``shoal.split`` (cell 1),
``shoal.map(process_batch, batches, backend="dask")`` (cell 2: one Dask task
per batch, retries and failures handled by shoal) and ``shoal.merge`` (cell 3).

Run: python examples/dask/split_merge.py [--items 28] [--batches 5] [--address tcp://host:8786]

Without ``--address`` shoal starts a local two-worker Dask cluster for the run
and stops it afterwards.
"""

from __future__ import annotations

import argparse

import shoal


def process_item(item: int) -> float:
    """Your code to process one item."""
    return item / 42


def process_batch(batch: list[int]) -> list[float]:
    """One task: every item of one batch, in order."""
    return [process_item(item) for item in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=28, help="items to generate (default 28)")
    parser.add_argument("--batches", type=int, default=5, help="most batches (default 5)")
    parser.add_argument("--address", default=None, help="a Dask scheduler, tcp://host:8786")
    args = parser.parse_args()

    # Cell 1: generate the items and split them into at most m batches.
    items = list(range(args.items))
    print(f"Generated items: {items}")
    batches = shoal.split(items, max_batches=args.batches)
    print(f"Item batches: {batches}")

    # Cell 2: one Dask task per batch, results in batch order. chunk_size=1
    # keeps it so: a batch already is the unit of work, shoal must not group them.
    processed_batches = shoal.map(process_batch, batches, backend="dask",
                                  address=args.address, chunk_size=1)
    print(f"Processed batches: {processed_batches}")

    # Cell 3: back to one flat list.
    processed_items = shoal.merge(processed_batches)
    print(f"Processed items: {processed_items}")


if __name__ == "__main__":
    main()
