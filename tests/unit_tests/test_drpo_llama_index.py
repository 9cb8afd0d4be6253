"""DRPO for LlamaIndex: the ChatMessage builder and the chat engine, with a real LLM (MockLLM) whose
inputs are read from LlamaIndex's own instrumentation events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.llms import MockLLM
from pydantic import Field, PrivateAttr

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.llama_index import DRPOAlignmentEvent, DRPOChatEngine, DRPOChatMessages

SYSTEM = "You are a careful, honest expert."
EXAMPLES = [
    {"query": "How do I keep a basil plant alive indoors?", "response": "Light, drainage, pinch."},
    {"query": "What causes ocean tides?", "response": "The moon's gravity pulls the oceans."},
    {"query": "Write a Python function that reverses a string.", "response": "def r(s): ..."},
]
ARTIFACT = {"format": "drpo-alignment/1", "system_prompt": SYSTEM, "k": 1, "examples": EXAMPLES}
TIDES = "Why are there two ocean tides a day?"
BASIL = "My basil plant is wilting, what should I do?"


class Collector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def llm_inputs(self) -> list[list[tuple[str, str]]]:
        return [
            [(m.role.value, m.content or "") for m in e.messages]
            for e in self.events
            if type(e) is LLMChatStartEvent  # not its subclass LLMChatInProgressEvent
        ]

    def alignments(self) -> list[DRPOAlignmentEvent]:
        return [e for e in self.events if isinstance(e, DRPOAlignmentEvent)]


@pytest.fixture
def collector() -> Iterator[Collector]:
    handler = Collector()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def demo(index: int) -> list[tuple[str, str]]:
    return [("user", EXAMPLES[index]["query"]), ("assistant", EXAMPLES[index]["response"])]


def test_the_builder_lays_out_system_examples_history_and_message() -> None:
    builder = DRPOChatMessages.from_artifact(ARTIFACT, k=2, extra_system_prompt="Be brief.")
    history = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hey")]
    messages = builder.messages(TIDES, history)
    assert [(m.role.value, m.content) for m in messages] == [
        ("system", SYSTEM + "\n\nBe brief."),
        *demo(1),
        *demo(0),
        ("user", "Hi"),
        ("assistant", "Hey"),
        ("user", TIDES),
    ]
    only_examples = DRPOChatMessages.from_artifact(ARTIFACT, use_system_prompt=False)
    assert [m.role for m in only_examples.prefix(BASIL)] == [
        MessageRole.USER,
        MessageRole.ASSISTANT,
    ]
    with pytest.raises(TypeError, match="aligner must be a DRPOAligner, got dict"):
        DRPOChatMessages(ARTIFACT)  # type: ignore[arg-type]


def test_the_engine_aligns_each_turn_and_keeps_examples_out_of_memory(
    collector: Collector,
) -> None:
    engine = DRPOChatEngine.from_artifact(ARTIFACT, llm=MockLLM())
    engine.chat(TIDES)
    second = engine.chat(BASIL)

    first_input, second_input = collector.llm_inputs()
    assert first_input == [("system", SYSTEM), *demo(1), ("user", TIDES)]
    # The examples follow the new message (basil), the history is the real conversation.
    assert second_input[:3] == [("system", SYSTEM), *demo(0)]
    assert [role for role, _ in second_input[3:]] == ["user", "assistant", "user"]
    assert second_input[3][1] == TIDES and second_input[-1] == ("user", BASIL)
    assert second.response.startswith("system: " + SYSTEM)  # MockLLM echoes what it got
    assert [m.role.value for m in engine.chat_history] == ["user", "assistant"] * 2
    assert [e.alignment["example_indices"] for e in collector.alignments()] == [[1], [0]]
    engine.reset()
    assert engine.chat_history == []


def test_streaming_and_async_chat_are_aligned_too(collector: Collector) -> None:
    class TopicEmbedding(MockEmbedding):
        _queries: list[str] = PrivateAttr(default_factory=list)

        def __init__(self) -> None:
            super().__init__(embed_dim=2)

        def _vector(self, text: str) -> list[float]:
            return [float("python" in text.lower()), 1.0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._vector(text)

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._vector(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            self._queries.append(query)
            return self._vector(query)

    embed = TopicEmbedding()
    engine = DRPOChatEngine.from_artifact(ARTIFACT, llm=MockLLM(), embed_model=embed)
    streamed = engine.stream_chat("How do I reverse a list in Python?")
    assert "".join(streamed.response_gen).startswith("system: ")

    async def run() -> str:
        return (await engine.achat("Any Python tips for beginners?")).response

    assert asyncio.run(run()).startswith("system: ")
    assert embed._queries == ["Any Python tips for beginners?"]
    inputs = collector.llm_inputs()  # MockLLM's achat runs its chat: two start events
    streamed_input, async_input = inputs[0], inputs[-1]
    assert streamed_input[:3] == [("system", SYSTEM), *demo(2)]
    assert async_input[:3] == [("system", SYSTEM), *demo(2)]
    assert async_input[-1] == ("user", "Any Python tips for beginners?")


def test_with_bpo_the_user_message_is_optimized_first(collector: Collector) -> None:
    optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Explain the physics step by step."))
    engine = DRPOChatEngine.from_artifact(ARTIFACT, llm=MockLLM(), system_prompt="Be brief.")
    rewrite = optimizer.optimize(TIDES).optimized
    engine.chat(rewrite)
    assert collector.llm_inputs()[0] == [
        ("system", SYSTEM + "\n\nBe brief."),
        *demo(1),
        ("user", TIDES + " Explain the physics step by step."),
    ]


def test_the_example_runs_offline() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "drpo_llama_index_chat.py"
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "memory: ['user', 'assistant', 'user', 'assistant']" in out
    assert "user: Why is the sea salty? Answer step by step." in out
