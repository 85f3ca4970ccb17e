"""Tutorial 2, example 5: errors handled inside process_item, with the
skip_failed failure strategy as a safety net (ported from the node tutorial).

Run: python examples/nodes/error_handling.py
"""

# The tutorial's code is kept as written.
# ruff: noqa: RUF010

import asyncio

from shoal import arun
from shoal.nodes import MultipleThreadNode


class RobustProcessor(MultipleThreadNode):
    """A processor that demonstrates error handling."""

    async def process_item(self, item):
        try:
            text = item['text']

            # Simulate an error for specific items
            if 'error' in text.lower():
                raise ValueError(f"Simulated error processing: {text}")

            # Normal processing
            await asyncio.sleep(0.01)
            return {
                'original': text,
                'processed': text.upper(),
                'status': 'success'
            }

        except Exception as e:
            print(f"Error processing '{text}': {str(e)}")
            return {
                'original': text,
                'error': str(e),
                'status': 'failed'
            }


async def main():
    # Test data with some items that will fail
    test_data_with_errors = [
        {'text': 'normal item 1'},
        {'text': 'item with error'},  # This will fail
        {'text': 'normal item 2'},
        {'text': 'another ERROR'},     # This will fail
        {'text': 'normal item 3'}
    ]

    # Test with error handling
    robust_processor = RobustProcessor(failure_strategy='skip_failed')

    print("=== Error Handling in Batch Processing ===")
    results_with_errors = await robust_processor.do(test_data_with_errors)

    print("\nResults summary:")
    successful = [r for r in results_with_errors.content if r.get('status') == 'success']
    failed = [r for r in results_with_errors.content if r.get('status') == 'failed']

    print(f"Successful: {len(successful)} items")
    print(f"Failed: {len(failed)} items")
    print(f"Total processed: {len(results_with_errors.content)} items")

    print("\nDetailed results:")
    for i, result in enumerate(results_with_errors.content, 1):
        status = result.get('status', 'unknown')
        original = result.get('original', 'unknown')
        if status == 'success':
            print(f"  {i}. {original} -> {result['processed']}")
        else:
            print(f"  {i}. {original} - Error: {result['error']}")


if __name__ == "__main__":
    arun(main())
