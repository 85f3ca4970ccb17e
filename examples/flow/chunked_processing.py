"""Chunked processing and result streaming from the flow batch docs.

Run: python examples/flow/chunked_processing.py
"""

import asyncio

from shoal import arun
from shoal.flow import BaseNode, BatchProcessor, NodeResult


class SquareNode(BaseNode):
    async def execute(self, node_context, workflow_context):
        await asyncio.sleep(0.01)
        value = node_context.input_data["value"]
        if value < 0:
            return NodeResult(success=False, error=f"negative value {value}")
        return NodeResult(success=True, output=value * value)


processing_node = SquareNode("square")


async def process_large_dataset(data, chunk_size=100):
    processor = BatchProcessor(
        node=processing_node,
        max_concurrency=10
    )

    all_results = []

    # Process in chunks
    for i in range(0, len(data), chunk_size):
        chunk = data[i:i + chunk_size]
        results = await processor.batch(chunk)
        all_results.extend(results)

        # Progress update
        print(f"Processed {min(i + chunk_size, len(data))}/{len(data)}")

    return all_results


async def stream_batch_results(processor, inputs):
    """Stream results to client as they complete"""
    async for result in processor.batch_as_completed(inputs):
        if result.success:
            # Send to client immediately
            yield {
                "index": result.index,
                "data": result.output,
                "status": "completed"
            }
        else:
            yield {
                "index": result.index,
                "error": result.error,
                "status": "failed"
            }


async def main():
    data = [{"value": v} for v in range(50)]
    results = await process_large_dataset(data, chunk_size=20)
    print(f"Sum of squares: {sum(r.output for r in results)}")

    processor = BatchProcessor(node=processing_node, max_concurrency=3)
    inputs = [{"value": v} for v in (3, -1, 4)]
    async for message in stream_batch_results(processor, inputs):
        print(f"stream: {message}")


if __name__ == "__main__":
    arun(main())
