"""Tutorial 2, examples 1-3: sequential text processing, threaded text
processing, and a translation service (ported from the node tutorial).

Run: python examples/nodes/translation_service.py
"""

import asyncio
import time

from shoal import arun
from shoal.nodes import MultipleThreadNode, SequentialNode


class SimpleTextProcessor(SequentialNode):
    """Process text items sequentially, maintaining order."""

    async def process_item(self, item):
        text = item['text']
        delay = item.get('delay', 0.01)  # Simulate processing time

        # Simulate some text processing work
        await asyncio.sleep(delay)

        # Process the text (convert to uppercase and add length)
        processed_text = text.upper()
        result = {
            'original': text,
            'processed': processed_text,
            'length': len(text),
            'processing_time': delay
        }

        print(f"Processed: '{text}' -> '{processed_text}'")
        return result


class ConcurrentTextProcessor(MultipleThreadNode):
    """Process text items concurrently using multiple threads."""

    async def process_item(self, item):
        text = item['text']
        delay = item.get('delay', 0.01)

        # Simulate I/O-bound work (like an API call)
        await asyncio.sleep(delay)

        # Process the text
        processed_text = text.title()  # Title case instead of uppercase
        result = {
            'original': text,
            'processed': processed_text,
            'length': len(text),
            'thread_id': id(asyncio.current_task()),
            'processing_time': delay
        }

        print(f"Thread processed: '{text}' -> '{processed_text}'")
        return result


# Mock translation function (simulates API call)
async def mock_translate(text, target_language):
    """Simulate translation by adding language prefix."""
    # Simulate API call delay
    await asyncio.sleep(0.02)

    translations = {
        'Spanish': f'[ES] {text}',
        'French': f'[FR] {text}',
        'German': f'[DE] {text}',
        'Chinese': f'[ZH] {text}',
        'Japanese': f'[JA] {text}',
        'Korean': f'[KO] {text}'
    }

    return translations.get(target_language, f'[{target_language[:2].upper()}] {text}')


class TranslationProcessor(MultipleThreadNode):
    """Translate text to multiple languages concurrently."""

    async def process_item(self, item):
        text = item['text']
        language = item['language']

        print(f"Translating to {language}...")

        # Translate the text
        translated_text = await mock_translate(text, language)

        result = {
            'original': text,
            'language': language,
            'translated': translated_text,
            'timestamp': time.time()
        }

        print(f"Translation complete for {language}")
        return result


async def main():
    # Example 1: Sequential Processing
    text_data = [
        {'text': 'hello world', 'delay': 0.01},
        {'text': 'spark framework', 'delay': 0.01},
        {'text': 'batch processing', 'delay': 0.01},
        {'text': 'parallel execution', 'delay': 0.01}
    ]

    processor = SimpleTextProcessor()
    start_time = time.time()

    print("=== Sequential Processing ===")
    results = await processor.do(text_data)

    end_time = time.time()
    print(f"\nTotal time: {end_time - start_time:.2f} seconds")
    print(f"Processed {len(results.content)} items")
    print(f"Results: {results.content}")

    # Example 2: Multi-Thread Processing
    concurrent_processor = ConcurrentTextProcessor()
    start_time = time.time()

    print("=== Multi-Thread Processing ===")
    thread_results = await concurrent_processor.do(text_data)

    end_time = time.time()
    print(f"\nTotal time: {end_time - start_time:.2f} seconds")
    print(f"Processed {len(thread_results.content)} items concurrently")
    print(f"Results: {thread_results.content}")

    # Example 3: Translation Service
    translation_data = [
        {'text': 'Hello, how are you?', 'language': 'Spanish'},
        {'text': 'Hello, how are you?', 'language': 'French'},
        {'text': 'Hello, how are you?', 'language': 'German'},
        {'text': 'Hello, how are you?', 'language': 'Chinese'},
        {'text': 'Hello, how are you?', 'language': 'Japanese'},
        {'text': 'Hello, how are you?', 'language': 'Korean'}
    ]

    translator = TranslationProcessor()
    start_time = time.time()

    print("=== Translation Service (Multi-Thread) ===")
    translation_results = await translator.do(translation_data)

    end_time = time.time()
    print("\nTranslation complete!")
    print(f"Total time: {end_time - start_time:.2f} seconds")
    print(f"Translated to {len(translation_results.content)} languages")

    # Display results nicely
    print("\nTranslation Results:")
    for result in translation_results.content:
        print(f"  {result['language']}: {result['translated']}")


if __name__ == "__main__":
    arun(main())
