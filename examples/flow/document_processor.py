"""Pattern 1 of the flow batch docs: process many documents in parallel.

The helpers (extract_text, summarize, extract_entities) stand in for real
parsing and models. One document is missing, so one result fails.

Run: python examples/flow/document_processor.py
"""

import asyncio

from shoal import arun
from shoal.flow import BaseNode, BatchProcessor, NodeResult

FAKE_FILES = {
    "path/to/doc1.pdf": "Ada Lovelace wrote the first program for the Analytical Engine.",
    "path/to/doc2.pdf": "Grace Hopper built the first compiler at Remington Rand.",
    "path/to/doc3.pdf": "Alan Turing described a universal machine in 1936.",
}


class DocumentProcessor(BaseNode):
    async def execute(self, node_context, workflow_context):
        doc = node_context.input_data["document"]

        # Extract text
        text = await self.extract_text(doc)

        # Generate summary
        summary = await self.summarize(text)

        # Extract entities
        entities = await self.extract_entities(text)

        return NodeResult(
            success=True,
            output={
                "summary": summary,
                "entities": entities,
                "word_count": len(text.split())
            }
        )

    async def extract_text(self, doc):
        await asyncio.sleep(0.01)  # reading a file
        if doc not in FAKE_FILES:
            raise FileNotFoundError(f"no such document: {doc}")
        return FAKE_FILES[doc]

    async def summarize(self, text):
        await asyncio.sleep(0.01)  # a model call
        return " ".join(text.split()[:4]) + "..."

    async def extract_entities(self, text):
        return [word.strip(".") for word in text.split()[1:] if word[0].isupper()]


async def main():
    # Process multiple documents
    processor = BatchProcessor(
        node=DocumentProcessor("doc_processor"),
        max_concurrency=5  # Process 5 documents at once
    )

    documents = [
        {"document": "path/to/doc1.pdf"},
        {"document": "path/to/doc2.pdf"},
        {"document": "path/to/missing.pdf"},
        {"document": "path/to/doc3.pdf"},
    ]

    results = await processor.batch(documents)

    # Analyze results
    successful = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    print(f"Processed: {len(successful)}/{len(documents)}")
    for r in successful:
        print(f"  {r.index}: {r.output['summary']} entities={r.output['entities']}")
    for r in failed:
        print(f"  {r.index}: FAILED - {r.error}")


if __name__ == "__main__":
    arun(main())
