"""Error recovery from the flow batch docs: retry failed items with
exponential backoff (``batch_with_retry``; backoff shortened for the demo).

The engine can do the same per item, without a second batch:
``BatchProcessor(node, retries=RetryPolicy(retries=3, backoff=0.01))``.

Run: python examples/flow/retry_with_backoff.py
"""

import asyncio

from shoal import RetryPolicy, arun
from shoal.flow import BaseNode, BatchProcessor, NodeResult


class FlakyNode(BaseNode):
    """Fails the first ``failures`` calls for each odd id, then succeeds."""

    def __init__(self, node_id, failures=1):
        super().__init__(node_id)
        self.failures = failures
        self.calls = {}

    async def execute(self, node_context, workflow_context):
        item_id = node_context.input_data["id"]
        self.calls[item_id] = self.calls.get(item_id, 0) + 1
        await asyncio.sleep(0.01)
        if item_id % 2 and self.calls[item_id] <= self.failures:
            return NodeResult(success=False, error=f"temporary failure for {item_id}")
        return NodeResult(success=True, output={"id": item_id, "calls": self.calls[item_id]})


async def batch_with_retry(processor, inputs, max_retries=3):
    results = []
    retry_items = []

    # Initial batch
    batch_results = await processor.batch(inputs)

    for result in batch_results:
        if result.success:
            results.append(result)
        else:
            retry_items.append((result.input_data, result.index, 0))

    # Retry failed items
    while retry_items and max_retries > 0:
        retry_batch = []

        for input_data, original_index, retry_count in retry_items:
            if retry_count < max_retries:
                retry_batch.append((input_data, original_index, retry_count + 1))

        if not retry_batch:
            break

        # Exponential backoff
        await asyncio.sleep(0.01 * 2 ** retry_batch[0][2])

        # Retry
        retry_results = await processor.batch([item[0] for item in retry_batch])

        new_retry_items = []
        for i, result in enumerate(retry_results):
            if result.success:
                result.index = retry_batch[i][1]  # Restore original index
                results.append(result)
            else:
                new_retry_items.append(retry_batch[i])

        retry_items = new_retry_items

    return sorted(results, key=lambda r: r.index)


async def main():
    inputs = [{"id": i} for i in range(6)]

    processor = BatchProcessor(FlakyNode("flaky", failures=2), max_concurrency=3)
    results = await batch_with_retry(processor, inputs)
    print(f"batch_with_retry: {len(results)}/{len(inputs)} succeeded, "
          f"indices {[r.index for r in results]}")

    # The same recovery done by the engine, per item.
    engine_retry = BatchProcessor(
        FlakyNode("flaky", failures=2), max_concurrency=3,
        retries=RetryPolicy(retries=3, backoff=0.01),
    )
    results = await engine_retry.batch(inputs)
    print(f"engine retries: {sum(r.success for r in results)}/{len(inputs)} succeeded, "
          f"calls {[r.output['calls'] for r in results]}")


if __name__ == "__main__":
    arun(main())
