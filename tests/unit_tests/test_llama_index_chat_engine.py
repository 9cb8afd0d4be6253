"""BPOChatEngine over real LlamaIndex chat engines and a real VectorStoreIndex: the LLM answers the
rewrite, retrieval and the condense step see the user's words, memory keeps them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from doubles_llama_index import (
    ADVICE,
    EventCollector,
    KeywordEmbedding,
    PromptRecordingLLM,
    build_index,
)
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    MessageRole,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.chat_engine import (
    CondensePlusContextChatEngine,
    CondenseQuestionChatEngine,
    ContextChatEngine,
    SimpleChatEngine,
)
from llama_index.core.instrumentation import get_dispatcher

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import BackendUnavailableError
from bpo_integrations.llama_index import BPOChatEngine, BPOChatMessageOptimizedEvent

FIRST = "Why do cats purr?"
SECOND = "And why do dogs bark?"


class RecordingLLM(PromptRecordingLLM):
    """A MockLLM that keeps every prompt (sync, async, streamed) and answers ``Answer N.``."""

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._prompts.append(prompt)
        return CompletionResponse(text=f"Answer {len(self._prompts)}.")

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        self._prompts.append(prompt)
        text = f"Answer {len(self._prompts)}."
        yield CompletionResponse(text=text, delta=text)


@pytest.fixture
def embedder(monkeypatch: pytest.MonkeyPatch) -> KeywordEmbedding:
    model = KeywordEmbedding()
    monkeypatch.setattr(Settings, "_embed_model", model)
    return model


@pytest.fixture
def llm() -> RecordingLLM:
    return RecordingLLM()


@pytest.fixture
def index(embedder: KeywordEmbedding) -> VectorStoreIndex:
    return build_index(embedder)


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def optimizer(calls: list[str]) -> BPOOptimizer:
    def rewrite(prompt: str) -> str:
        calls.append(prompt)
        return prompt + ADVICE

    return BPOOptimizer(CallableBackend(rewrite))


def contents(engine: BPOChatEngine) -> list[tuple[str, str]]:
    return [(m.role.value, m.content or "") for m in engine.chat_history]


def sources(response: Any) -> list[str]:
    return [n.node.ref_doc_id for n in response.source_nodes]


# -- context chat engine ----------------------------------------------------------------------


def test_context_engine_answers_the_rewrite_retrieves_and_remembers_the_original(
    index: VectorStoreIndex,
    llm: RecordingLLM,
    embedder: KeywordEmbedding,
    optimizer: BPOOptimizer,
    calls: list[str],
) -> None:
    inner = index.as_chat_engine(chat_mode="context", llm=llm, similarity_top_k=1)
    assert isinstance(inner, ContextChatEngine)
    engine = BPOChatEngine(inner, optimizer)

    first = engine.chat(FIRST)
    second = engine.chat(SECOND)

    assert calls == [FIRST, SECOND]  # the optimizer sees each user message, nothing else
    assert embedder.queries == [FIRST, SECOND]  # retrieval embeds what the user wrote
    assert sources(first) == ["cat"] and sources(second) == ["dog"]
    # the LLM is asked the rewrite, after the conversation as the user wrote it
    assert f"user: {FIRST}{ADVICE}" in llm.prompts[0]
    assert f"user: {FIRST}\nassistant:" in llm.prompts[1]
    assert llm.prompts[1].rstrip().endswith(f"user: {SECOND}{ADVICE}\nassistant:")
    assert f"{FIRST}{ADVICE}" not in llm.prompts[1]
    # memory holds the original messages
    assert [text for role, text in contents(engine) if role == "user"] == [FIRST, SECOND]
    assert first.metadata["bpo"]["optimized"] == FIRST + ADVICE
    assert first.sources[0].raw_input == {"message": FIRST}


async def test_context_engine_async_and_streaming(
    index: VectorStoreIndex, llm: RecordingLLM, embedder: KeywordEmbedding, optimizer: BPOOptimizer
) -> None:
    engine = BPOChatEngine(
        index.as_chat_engine(chat_mode="context", llm=llm, similarity_top_k=1), optimizer
    )
    response = await engine.achat(FIRST)
    streamed = await engine.astream_chat(SECOND)
    tokens = [token async for token in streamed.async_response_gen()]

    assert f"user: {FIRST}{ADVICE}" in llm.prompts[0]
    assert llm.prompts[1].rstrip().endswith(f"user: {SECOND}{ADVICE}\nassistant:")
    assert response.response == "Answer 1." and "".join(tokens) == "Answer 2."
    assert embedder.queries == [FIRST, SECOND]
    assert [text for role, text in contents(engine) if role == "user"] == [FIRST, SECOND]
    assert contents(engine)[-1][0] == "assistant"


def test_context_engine_sync_streaming(
    index: VectorStoreIndex, llm: RecordingLLM, optimizer: BPOOptimizer
) -> None:
    engine = BPOChatEngine(index.as_chat_engine(chat_mode="context", llm=llm), optimizer)
    streamed = engine.stream_chat(FIRST)
    text = "".join(streamed.response_gen)

    assert text == "Answer 1."
    assert f"user: {FIRST}{ADVICE}" in llm.prompts[0]
    assert contents(engine) == [("user", FIRST), ("assistant", "Answer 1.")]


# -- condense-plus-context chat engine --------------------------------------------------------


def test_condense_plus_context_condenses_and_retrieves_with_the_original(
    index: VectorStoreIndex,
    llm: RecordingLLM,
    embedder: KeywordEmbedding,
    optimizer: BPOOptimizer,
) -> None:
    inner = index.as_chat_engine(chat_mode="condense_plus_context", llm=llm, similarity_top_k=1)
    assert isinstance(inner, CondensePlusContextChatEngine)
    engine = BPOChatEngine(inner, optimizer)

    engine.chat(FIRST)
    engine.chat(SECOND)

    condense_prompt, answer_prompt = llm.prompts[1], llm.prompts[2]
    assert f"Follow Up Input: {SECOND}\n" in condense_prompt  # condensed from the original
    assert f"user: {FIRST}\nassistant: Answer 1." in condense_prompt
    assert ADVICE not in condense_prompt
    # retrieval embedded the user's first message, then the condensed question
    assert embedder.queries == [FIRST, "Answer 2."]
    assert answer_prompt.rstrip().endswith(f"user: {SECOND}{ADVICE}\nassistant:")
    assert f"user: {FIRST}\nassistant: Answer 1." in answer_prompt
    assert [text for role, text in contents(engine) if role == "user"] == [FIRST, SECOND]


# -- simple chat engine -----------------------------------------------------------------------


async def test_simple_engine_answers_the_rewrite_and_remembers_the_original(
    llm: RecordingLLM, optimizer: BPOOptimizer
) -> None:
    inner = SimpleChatEngine.from_defaults(llm=llm, system_prompt="Be brief.")
    engine = BPOChatEngine(inner, optimizer)

    engine.chat(FIRST)
    await engine.achat(SECOND)

    assert llm.prompts[0].rstrip().endswith(f"user: {FIRST}{ADVICE}\nassistant:")
    assert f"user: {FIRST}\nassistant:" in llm.prompts[1]
    assert llm.prompts[1].rstrip().endswith(f"user: {SECOND}{ADVICE}\nassistant:")
    assert [text for role, text in contents(engine) if role == "user"] == [FIRST, SECOND]
    assert inner.chat_history[0].content == FIRST


# -- what is recorded, fallbacks, bad arguments -----------------------------------------------


def test_instrumentation_and_the_legacy_callback_manager_see_each_optimization(
    index: VectorStoreIndex, llm: RecordingLLM, optimizer: BPOOptimizer
) -> None:
    debug = LlamaDebugHandler()
    inner = ContextChatEngine.from_defaults(index.as_retriever(similarity_top_k=1), llm=llm)
    inner.callback_manager = CallbackManager([debug])
    collector = EventCollector()
    root = get_dispatcher()
    root.add_event_handler(collector)
    try:
        BPOChatEngine(inner, optimizer).chat(FIRST)
    finally:
        root.event_handlers.remove(collector)

    ((start, end),) = [
        pair
        for pair in debug.get_event_pairs(CBEventType.QUERY)
        if pair[-1].payload and "bpo" in pair[-1].payload
    ]
    assert start.payload["query_str"] == FIRST
    assert end.payload["bpo"]["optimized"] == FIRST + ADVICE
    (event,) = [e for e in collector.events if isinstance(e, BPOChatMessageOptimizedEvent)]
    assert (event.message, event.result.optimized) == (FIRST, FIRST + ADVICE)


def test_a_fallback_asks_the_llm_the_message_as_written(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("no server")

    engine = BPOChatEngine(
        index.as_chat_engine(chat_mode="context", llm=llm),
        BPOOptimizer(CallableBackend(down), max_retries=0),
    )
    response = engine.chat(FIRST)

    assert llm.prompts[0].rstrip().endswith(f"user: {FIRST}\nassistant:")
    assert response.metadata["bpo"]["fell_back"] is True


def test_wrapping_twice_hooks_once_and_bad_arguments_name_the_fix(
    index: VectorStoreIndex, llm: RecordingLLM, optimizer: BPOOptimizer
) -> None:
    inner = index.as_chat_engine(chat_mode="context", llm=llm)
    BPOChatEngine(inner, optimizer)
    BPOChatEngine(inner, optimizer).chat(FIRST)
    assert llm.prompts[0].count(ADVICE) == 1

    condense = CondenseQuestionChatEngine.from_defaults(index.as_query_engine(llm=llm), llm=llm)
    with pytest.raises(TypeError, match="query_engine=BPOTransformQueryEngine"):
        BPOChatEngine(condense, optimizer)
    with pytest.raises(TypeError, match="BPOChatEngine takes a BPOOptimizer, a Backend"):
        BPOChatEngine(inner, "http://localhost:8080")
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        BPOChatEngine(inner, optimizer, iterations=0)


def test_concurrent_conversations_each_see_their_own_rewrite(
    index: VectorStoreIndex, llm: RecordingLLM, optimizer: BPOOptimizer
) -> None:
    first = BPOChatEngine(index.as_chat_engine(chat_mode="context", llm=llm), optimizer)
    second = BPOChatEngine(index.as_chat_engine(chat_mode="context", llm=llm), optimizer)

    async def both() -> list[Any]:
        return list(await asyncio.gather(first.achat(FIRST), second.achat(SECOND)))

    one, two = asyncio.run(both())
    assert one.response != two.response
    by_answer = dict(zip([one.response, two.response], [FIRST, SECOND], strict=True))
    for prompt in llm.prompts:
        asked = by_answer[f"Answer {llm.prompts.index(prompt) + 1}."]
        assert prompt.rstrip().endswith(f"user: {asked}{ADVICE}\nassistant:")


def test_role_of_the_stored_turns(index: VectorStoreIndex, llm: RecordingLLM) -> None:
    engine = BPOChatEngine(
        index.as_chat_engine(chat_mode="context", llm=llm),
        BPOOptimizer(CallableBackend(lambda p: p + ADVICE)),
    )
    engine.chat(FIRST)
    assert [m.role for m in engine.chat_history] == [MessageRole.USER, MessageRole.ASSISTANT]
    engine.reset()
    assert engine.chat_history == []


def test_the_chat_engine_example_runs_offline() -> None:
    script = Path(__file__).resolve().parents[2] / "examples" / "llama_index_chat_engine.py"
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OPENAI_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "the LLM was asked: Why do cats purr? Explain the mechanism step by step." in done.stdout
    assert "then: And when they are hurt? Explain the mechanism step by step." in done.stdout
    assert "memory: ['Why do cats purr?', 'And when they are hurt?']" in done.stdout
