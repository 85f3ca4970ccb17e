"""Tutorial 2, exercises 1 and 2: a square calculator, sequential and then
threaded, with a timing comparison (ported from the node tutorial).

Run: python examples/nodes/square_calculator.py
"""

import asyncio
import time

from shoal import arun
from shoal.nodes import MultipleThreadNode, SequentialNode


# Exercise 1 Solution
class SquareCalculator(SequentialNode):
    async def process_item(self, item):
        value = item['value']
        await asyncio.sleep(0.01)  # Simulate work
        result = {
            'original': value,
            'square': value ** 2,
            'cube': value ** 3
        }
        return result


# Exercise 2 Solution
class ThreadedSquareCalculator(MultipleThreadNode):
    async def process_item(self, item):
        value = item['value']
        await asyncio.sleep(0.01)  # Simulate work
        result = {
            'original': value,
            'square': value ** 2,
            'cube': value ** 3
        }
        return result


async def main():
    # Test it
    numbers = [{'value': i} for i in range(1, 6)]
    calculator = SquareCalculator()
    result = await calculator.do(numbers)
    print("Square Calculator Results:")
    for r in result.content:
        print(f"  {r['original']}^2 = {r['square']}, {r['original']}^3 = {r['cube']}")

    # Performance comparison
    more_numbers = [{'value': i} for i in range(1, 11)]

    print("Performance Comparison:")

    # Sequential
    seq_calc = SquareCalculator()
    start = time.time()
    seq_results = await seq_calc.do(more_numbers)
    seq_time = time.time() - start
    print(f"Sequential: {seq_time:.2f}s")

    # Threaded
    thread_calc = ThreadedSquareCalculator()
    start = time.time()
    thread_results = await thread_calc.do(more_numbers)
    thread_time = time.time() - start
    print(f"Threaded: {thread_time:.2f}s")

    print(f"Speedup: {seq_time/thread_time:.1f}x")
    print(f"Same results: {seq_results.content == thread_results.content}")


if __name__ == "__main__":
    arun(main())
