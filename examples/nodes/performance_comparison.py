"""Tutorial 2, example 4: sequential vs multi-thread processing of the same
items (ported from the node tutorial).

Run: python examples/nodes/performance_comparison.py
"""

import asyncio
import time

from shoal import arun
from shoal.nodes import MultipleThreadNode, SequentialNode


class BenchmarkProcessor:
    """Utility class to compare different processing strategies."""

    class Sequential(SequentialNode):
        async def process_item(self, item):
            await asyncio.sleep(item['delay'])
            return {'item': item['id'], 'processed': True}

    class Threaded(MultipleThreadNode):
        async def process_item(self, item):
            await asyncio.sleep(item['delay'])
            return {'item': item['id'], 'processed': True}

    @staticmethod
    async def run_benchmark(name, processor_class, data):
        print(f"\n=== {name} ===")
        processor = processor_class()
        start_time = time.time()
        results = await processor.do(data)
        end_time = time.time()
        print(f"Time: {end_time - start_time:.2f}s")
        print(f"Results: {len(results.content)} items processed")
        return end_time - start_time


async def main():
    # Create test data with different processing times
    test_data = [
        {'id': i, 'delay': 0.01} for i in range(8)
    ]

    print("Performance Comparison: Sequential vs Multi-Thread")
    print(f"Test data: {len(test_data)} items, each with 0.01s delay")

    # Run benchmarks
    sequential_time = await BenchmarkProcessor.run_benchmark(
        "Sequential Processing",
        BenchmarkProcessor.Sequential,
        test_data
    )

    threaded_time = await BenchmarkProcessor.run_benchmark(
        "Multi-Thread Processing",
        BenchmarkProcessor.Threaded,
        test_data
    )

    print("\n=== Summary ===")
    print(f"Sequential time: {sequential_time:.2f}s")
    print(f"Multi-thread time: {threaded_time:.2f}s")
    speedup = sequential_time / threaded_time if threaded_time > 0 else float('inf')
    print(f"Speedup: {speedup:.1f}x faster")


if __name__ == "__main__":
    arun(main())
