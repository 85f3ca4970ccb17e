"""Pattern 3 of the flow batch docs: a BatchProcessor subclass that spaces
out API calls, one process_single call at a time.

The engine can also do this on its own, with every input still running
concurrently up to max_concurrency:
``BatchProcessor(node, max_concurrency=10, rate=10)`` (10 calls/second).

Run: python examples/flow/rate_limited_processor.py
"""

import asyncio

from shoal import arun
from shoal.flow import BaseNode, BatchProcessor, NodeResult


class APICallNode(BaseNode):
    """Stands in for an HTTP API call."""

    async def execute(self, node_context, workflow_context):
        await asyncio.sleep(0.01)
        return NodeResult(success=True, output={"echo": node_context.input_data["query"]})


class RateLimitedProcessor(BatchProcessor):
    def __init__(self, node, requests_per_second=10):
        super().__init__(
            node=node,
            max_concurrency=requests_per_second
        )
        self.delay = 1.0 / requests_per_second

    async def batch_as_completed(self, inputs):
        """Process with rate limiting"""
        for i, input_data in enumerate(inputs):
            # Rate limit
            if i > 0:
                await asyncio.sleep(self.delay)

            # Process
            result = await self.process_single(input_data, i)
            yield result


async def main():
    api_requests = [{"query": f"q{i}"} for i in range(5)]

    # Use with API calls
    api_processor = RateLimitedProcessor(
        node=APICallNode("api"),
        requests_per_second=50
    )

    async for result in api_processor.batch_as_completed(api_requests):
        print(f"API call {result.index}: {result.success}")

    # The engine's own rate limit: same calls, no subclass needed.
    limited = BatchProcessor(APICallNode("api"), max_concurrency=5, rate=50)
    results = await limited.batch(api_requests)
    print(f"Engine rate limit: {sum(r.success for r in results)}/{len(results)} calls ok")


if __name__ == "__main__":
    arun(main())
