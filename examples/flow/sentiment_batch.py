"""The complete example of the flow batch docs: batch sentiment analysis.

analyze_sentiment and calculate_score stand in for a model.

Run: python examples/flow/sentiment_batch.py
"""

import asyncio

from shoal.flow import BaseNode, BatchProcessor, NodeResult

POSITIVE = {"love", "great", "excellent", "amazing", "good"}
NEGATIVE = {"terrible", "awful", "bad", "hate", "worst"}


class SentimentAnalyzer(BaseNode):
    """Analyze sentiment of text"""

    async def execute(self, node_context, workflow_context):
        text = node_context.input_data["text"]

        # Simulate sentiment analysis
        sentiment = await self.analyze_sentiment(text)
        score = await self.calculate_score(text)

        return NodeResult(
            success=True,
            output={
                "text": text,
                "sentiment": sentiment,
                "score": score
            }
        )

    @staticmethod
    def _counts(text):
        words = {w.strip("!.,'").lower() for w in text.split()}
        return len(words & POSITIVE), len(words & NEGATIVE)

    async def analyze_sentiment(self, text):
        await asyncio.sleep(0.01)
        pos, neg = self._counts(text)
        return "positive" if pos > neg else "negative" if neg > pos else "neutral"

    async def calculate_score(self, text):
        pos, neg = self._counts(text)
        return 0.5 + 0.5 * (pos - neg) / max(pos + neg, 1)


async def batch_sentiment_analysis():
    # Sample texts
    texts = [
        "I love this product!",
        "Terrible experience.",
        "It's okay, nothing special.",
        "Great value, amazing support.",
    ]

    # Create batch processor
    processor = BatchProcessor(
        node=SentimentAnalyzer("analyzer"),
        max_concurrency=10,
        continue_on_error=True
    )

    # Process all texts
    results = await processor.batch([
        {"text": text} for text in texts
    ])

    # Analyze results
    positive = [r for r in results if r.success and r.output["sentiment"] == "positive"]
    negative = [r for r in results if r.success and r.output["sentiment"] == "negative"]
    neutral = [r for r in results if r.success and r.output["sentiment"] == "neutral"]

    print(f"Positive: {len(positive)}")
    print(f"Negative: {len(negative)}")
    print(f"Neutral: {len(neutral)}")

    # Calculate average score
    scores = [r.output["score"] for r in results if r.success]
    avg_score = sum(scores) / len(scores) if scores else 0
    print(f"Average score: {avg_score:.2f}")


if __name__ == "__main__":
    # Run
    asyncio.run(batch_sentiment_analysis())
