"""Map / filter / reduce and multi-model inference from the flow batch docs.

Run: python examples/flow/map_filter_reduce.py
"""

# The docs' code is kept as written.
# ruff: noqa: RUF005

import asyncio
from collections import Counter

from shoal import arun
from shoal.flow import (
    BaseNode,
    FilterNode,
    MapNode,
    NodeContext,
    NodeResult,
    ParallelNode,
    ParallelStrategy,
    ReduceNode,
    WorkflowContext,
)

KOREAN = {"Hello": "안녕하세요", "World": "세계"}


class TranslationNode(BaseNode):
    """A stand-in for a translation model: a tiny dictionary."""

    async def execute(self, node_context, workflow_context):
        text = node_context.input_data["item"]
        await asyncio.sleep(0.01)
        return NodeResult(success=True, output=KOREAN.get(text, text))


class ModelNode(BaseNode):
    """A stand-in for an LLM: every model answers 4, except a confused one."""

    answer = "4"

    async def execute(self, node_context, workflow_context):
        await asyncio.sleep(0.01)
        return NodeResult(success=True, output=self.answer)


class GPT4Node(ModelNode):
    pass


class ClaudeNode(ModelNode):
    pass


class GeminiNode(ModelNode):
    answer = "four"


def most_common_answer(outputs):
    answers = [o["output"] for o in outputs if o["success"]]
    return Counter(answers).most_common(1)[0][0] if answers else None


def calculate_agreement(outputs):
    answers = [o["output"] for o in outputs if o["success"]]
    return Counter(answers).most_common(1)[0][1] / len(outputs) if answers else 0.0


async def main():
    workflow_context = WorkflowContext()
    translation_node = TranslationNode("translate")

    # Translate multiple texts
    map_node = MapNode(
        node_id="batch_translate",
        child_node=translation_node,
        input_key="texts",        # List in input
        output_key="translations", # List in output
        max_concurrency=5          # Process 5 at a time
    )

    # Usage
    result = await map_node.execute(
        NodeContext(input_data={
            "texts": ["Hello", "World", "AI"]
        }),
        workflow_context
    )
    print(f"map: {result.output}")

    # Filter high-confidence results
    filter_node = FilterNode(
        node_id="filter_confident",
        filter_fn=lambda x: x["confidence"] > 0.8,
        input_key="predictions",
        output_key="confident_predictions"
    )

    # Usage
    result = await filter_node.execute(
        NodeContext(input_data={
            "predictions": [
                {"text": "A", "confidence": 0.9},
                {"text": "B", "confidence": 0.6},
                {"text": "C", "confidence": 0.95}
            ]
        }),
        workflow_context
    )
    print(f"filter: {result.output}")

    # Sum scores
    reduce_node = ReduceNode(
        node_id="sum_scores",
        reduce_fn=lambda acc, x: acc + x["score"],
        initial_value=0,
        input_key="results",
        output_key="total_score"
    )
    result = await reduce_node.execute(
        NodeContext(input_data={"results": [{"score": 3}, {"score": 4}, {"score": 5}]}),
        workflow_context,
    )
    print(f"reduce: {result.output}")

    # Aggregate responses
    aggregate_node = ReduceNode(
        node_id="aggregate",
        reduce_fn=lambda acc, x: {
            **acc,
            x["category"]: acc.get(x["category"], []) + [x["item"]]
        },
        initial_value={},
        input_key="items",
        output_key="grouped"
    )
    result = await aggregate_node.execute(
        NodeContext(input_data={"items": [
            {"category": "fruit", "item": "apple"},
            {"category": "vegetable", "item": "leek"},
            {"category": "fruit", "item": "pear"},
        ]}),
        workflow_context,
    )
    print(f"aggregate: {result.output}")

    # Run multiple models in parallel
    multi_model = MapNode(
        node_id="multi_model",
        child_node=ParallelNode(
            nodes=[
                GPT4Node("gpt4"),
                ClaudeNode("claude"),
                GeminiNode("gemini")
            ],
            strategy=ParallelStrategy.ALL_SETTLED
        ),
        input_key="prompts",
        output_key="model_outputs",
        max_concurrency=3
    )

    # Aggregate results
    consensus = ReduceNode(
        node_id="find_consensus",
        reduce_fn=lambda acc, outputs: {
            "consensus": most_common_answer(outputs),
            "confidence": calculate_agreement(outputs),
            "all_answers": outputs
        },
        input_key="model_outputs",
        output_key="final_answer"
    )

    # Pipeline
    pipeline = multi_model | consensus

    result = await pipeline.execute(
        NodeContext(input_data={"prompts": ["What is 2 + 2?"]}), workflow_context
    )
    answer = result.output["final_answer"]
    print(f"consensus: {answer['consensus']} (agreement {answer['confidence']:.2f})")


if __name__ == "__main__":
    arun(main())
