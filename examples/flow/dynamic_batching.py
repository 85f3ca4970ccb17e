"""Dynamic batching from the flow batch docs: grow or shrink the batch size
after each batch, aiming at a target time per batch.

Run: python examples/flow/dynamic_batching.py
"""

import asyncio
import time

from shoal import arun
from shoal.flow import BaseNode, BatchProcessor, NodeResult


class WorkNode(BaseNode):
    async def execute(self, node_context, workflow_context):
        await asyncio.sleep(0.01)
        return NodeResult(success=True, output=node_context.input_data["n"] * 2)


class DynamicBatchProcessor:
    def __init__(self, node, target_time=1.0):
        self.node = node
        self.target_time = target_time
        self.batch_size = 10  # Start size

    async def process(self, items):
        processor = BatchProcessor(
            node=self.node,
            max_concurrency=self.batch_size
        )

        start_time = time.time()
        results = await processor.batch(items[:self.batch_size])
        elapsed = time.time() - start_time

        # Adjust batch size
        if elapsed < self.target_time * 0.8:
            self.batch_size = min(self.batch_size * 2, 100)
        elif elapsed > self.target_time * 1.2:
            self.batch_size = max(self.batch_size // 2, 1)

        return results


async def main():
    items = [{"n": i} for i in range(100)]
    dynamic = DynamicBatchProcessor(WorkNode("work"), target_time=0.5)
    done = 0
    while done < len(items):
        size = dynamic.batch_size
        results = await dynamic.process(items[done:])
        done += len(results)
        print(f"batch of {len(results)} (batch size was {size}, now {dynamic.batch_size})")
    print(f"Processed {done}/{len(items)} items")


if __name__ == "__main__":
    arun(main())
