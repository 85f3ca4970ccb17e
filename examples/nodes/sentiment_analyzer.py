"""Tutorial 2, exercise 3: a threaded sentiment analyzer that reports
malformed input instead of failing (ported from the node tutorial).

Run: python examples/nodes/sentiment_analyzer.py
"""

# The tutorial's code is kept as written.
# ruff: noqa: B020, E501

import asyncio

from shoal import arun
from shoal.nodes import MultipleThreadNode


class SentimentAnalyzer(MultipleThreadNode):
    """Analyze sentiment of text messages."""

    async def process_item(self, item):
        try:
            text = item.get('text', '')
            message_id = item.get('id', 'unknown')

            # Validate input
            if not text or not isinstance(text, str):
                raise ValueError(f"Invalid text: {text}")

            # Simulate sentiment analysis API call
            await asyncio.sleep(0.01)

            # Simple sentiment analysis (mock)
            positive_words = ['good', 'great', 'excellent', 'amazing', 'love', 'happy', 'wonderful']
            negative_words = ['bad', 'terrible', 'awful', 'hate', 'sad', 'horrible', 'worst']

            text_lower = text.lower()
            positive_count = sum(1 for word in positive_words if word in text_lower)
            negative_count = sum(1 for word in negative_words if word in text_lower)

            if positive_count > negative_count:
                sentiment = 'positive'
                score = positive_count / max(positive_count + negative_count, 1)
            elif negative_count > positive_count:
                sentiment = 'negative'
                score = negative_count / max(positive_count + negative_count, 1)
            else:
                sentiment = 'neutral'
                score = 0.5

            return {
                'id': message_id,
                'text': text,
                'sentiment': sentiment,
                'confidence': round(score, 2),
                'word_count': len(text.split())
            }

        except Exception as e:
            return {
                'id': item.get('id', 'unknown'),
                'text': item.get('text', ''),
                'error': str(e),
                'status': 'failed'
            }


async def main():
    messages = [
        {'id': 1, 'text': 'I love this amazing product!'},
        {'id': 2, 'text': 'This is terrible and awful'},
        {'id': 3, 'text': 'It is good but not great'},
        {'id': 4, 'text': ''},  # This should fail
        {'id': 5, 'text': 'Wonderful experience, happy with the result'},
        {'id': 6, 'text': 'Bad bad bad'}
    ]

    analyzer = SentimentAnalyzer()
    result = await analyzer.do(messages)

    print("Sentiment Analysis Results:")
    for result in result.content:
        if 'error' in result:
            print(f"  ID {result['id']}: ERROR - {result['error']}")
        else:
            print(f"  ID {result['id']}: {result['sentiment'].upper()} (confidence: {result['confidence']})")
            print(f"    Text: {result['text']}")


if __name__ == "__main__":
    arun(main())
