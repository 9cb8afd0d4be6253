"""DRPORunnable in real LCEL chains: the model gets the system prompt and the K retrieved examples
in front of the user's turn, and nothing else changes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableField
from pydantic import Field, ValidationError

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.drpo import DRPOAligner, write_artifact
from bpo_integrations.langchain import ALIGNMENT_EVENT, BPORunnable, DRPORunnable, RunnableDRPO

SYSTEM = "You are a careful, honest expert. Explain your reasoning."
EXAMPLES = [
    {"query": "How do I keep a basil plant alive indoors?", "response": "Light, drainage, pinch."},
    {"query": "What causes ocean tides?", "response": "The moon's gravity pulls the oceans."},
    {"query": "Write a Python function that reverses a string.", "response": "def r(s): ..."},
    {"query": "Why is the ocean salty?", "response": "Rivers carry dissolved salts to it."},
]
ARTIFACT = {"format": "drpo-alignment/1", "system_prompt": SYSTEM, "k": 2, "examples": EXAMPLES}
QUESTION = "Why does the ocean have tides twice a day?"
SUFFIX = " Explain it step by step."


class RecordingChatModel(BaseChatModel):
    """A fake chat model that answers "ok" and keeps the messages of every call."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])

    @property
    def _llm_type(self) -> str:
        return "recording-chat"


def layout(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in messages]  # type: ignore[misc]


def expected(system: str, picks: list[int], *tail: tuple[str, str]) -> list[tuple[str, str]]:
    turns = [("system", system)] if system else []
    for index in picks:
        turns += [("human", EXAMPLES[index]["query"]), ("ai", EXAMPLES[index]["response"])]
    return [*turns, *tail]


@pytest.fixture
def drpo() -> DRPORunnable:
    return DRPORunnable.from_artifact(ARTIFACT)


def test_the_model_gets_exactly_the_system_prompt_and_the_k_most_similar_examples(
    drpo: DRPORunnable,
) -> None:
    model = RecordingChatModel()
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    assert (prompt | drpo | model).invoke({"question": QUESTION}).content == "ok"
    # Tides first (shares "ocean" and "tides"), then the salty ocean; basil and Python are not.
    assert layout(model.seen[0]) == expected(SYSTEM, [1, 3], ("human", QUESTION))
    assert drpo.aligner.select(QUESTION).indices == (1, 3)


@pytest.mark.parametrize(
    ("mode", "system"),
    [
        ("merge", SYSTEM + "\n\nYou work for a marine museum."),
        ("replace", SYSTEM),
        ("keep", "You work for a marine museum."),
    ],
)
def test_the_apps_own_system_message(mode: str, system: str) -> None:
    drpo = DRPORunnable.from_artifact(ARTIFACT, k=1, system_message=mode)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You work for a marine museum."), ("human", "{question}")]
    )
    value = (prompt | drpo).invoke({"question": QUESTION})
    assert isinstance(value, ChatPromptValue)
    assert layout(value.messages) == expected(system, [1], ("human", QUESTION))


def test_examples_go_before_the_history_and_follow_the_last_user_turn(drpo: DRPORunnable) -> None:
    history = [HumanMessage("Tell me about basil plants.", id="h1"), AIMessage("Basil likes sun.")]
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    value = (prompt | drpo).invoke({"history": history, "question": QUESTION})
    assert layout(value.messages) == expected(
        SYSTEM + "\n\nBe brief.",
        [1, 3],
        ("human", "Tell me about basil plants."),
        ("ai", "Basil likes sun."),
        ("human", QUESTION),
    )
    assert value.messages[-3].id == "h1"  # history messages are passed on as they are


def test_every_input_type(drpo: DRPORunnable) -> None:
    want = expected(SYSTEM, [1, 3], ("human", QUESTION))
    from_str = drpo.invoke(QUESTION)
    assert isinstance(from_str, ChatPromptValue) and layout(from_str.messages) == want
    assert layout(drpo.invoke(StringPromptValue(text=QUESTION)).messages) == want
    from_list = drpo.invoke([("human", QUESTION)])
    assert isinstance(from_list, list) and layout(from_list) == want
    from_dict = DRPORunnable(aligner=drpo.aligner, input_key="q").invoke({"q": QUESTION, "x": 1})
    assert from_dict["x"] == 1 and layout(from_dict["q"].messages) == want
    batched = drpo.batch([QUESTION, "Reverse a string in Python"])
    assert layout(batched[1].messages)[1:3] == [
        ("human", EXAMPLES[2]["query"]),
        ("ai", EXAMPLES[2]["response"]),
    ]


def test_bad_inputs_name_the_fix(drpo: DRPORunnable, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="found no human message with text to align"):
        drpo.invoke([SystemMessage("only a system message")])
    with pytest.raises(ValueError, match="without the key 'input'"):
        drpo.invoke({"question": QUESTION})
    with pytest.raises(TypeError, match="DRPORunnable got int as input; it accepts str"):
        drpo.invoke(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aligner must be a DRPOAligner, an Alignment"):
        DRPORunnable(aligner=3.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="format 'drpo-alignment/7'"):
        DRPORunnable(aligner={**ARTIFACT, "format": "drpo-alignment/7"})
    path = write_artifact(tmp_path / "alignment.json", ARTIFACT)
    assert DRPORunnable(aligner=str(path)).aligner.artifact.source == str(path)


def test_enabled_switch_passes_the_input_through(drpo: DRPORunnable) -> None:
    switchable = drpo.configurable_fields(
        enabled=ConfigurableField(id="drpo_enabled", name="DRPO on/off")
    )
    off = switchable.with_config(configurable={"drpo_enabled": False})
    assert off.invoke(QUESTION) == QUESTION
    assert layout(switchable.invoke(QUESTION).messages)[0] == ("system", SYSTEM)
    assert RunnableDRPO is DRPORunnable


def test_bpo_then_drpo_in_one_chain() -> None:
    """``prompt | bpo | drpo | llm``: BPO rewrites the user's prompt alone; DRPO retrieves with
    the rewrite and the model gets system prompt, examples and the rewrite."""
    bpo = BPORunnable(optimizer=BPOOptimizer(CallableBackend(lambda p: p + SUFFIX)))
    drpo = DRPORunnable.from_artifact(ARTIFACT)
    model = RecordingChatModel()
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    (prompt | bpo | drpo | model).invoke({"question": QUESTION})
    assert layout(model.seen[0]) == expected(SYSTEM, [1, 3], ("human", QUESTION + SUFFIX))

    # The other order with BPO on every human turn would rewrite the demonstrations' queries,
    # breaking the (query, response) pairs the judge scored: the reason for BPO first.
    all_turns = BPORunnable(
        optimizer=BPOOptimizer(CallableBackend(lambda p: p + SUFFIX)), target="all_human"
    )
    (prompt | drpo | all_turns | model).invoke({"question": QUESTION})
    assert model.seen[1][1].content == EXAMPLES[1]["query"] + SUFFIX


def test_async_path_awaits_the_embeddings_and_sends_the_event() -> None:
    class TopicEmbeddings(Embeddings):
        """Two topics: the ocean and everything else; records the async queries."""

        def __init__(self) -> None:
            self.async_queries: list[str] = []

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [self.embed_query(t) for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return [float("ocean" in text.lower()), 1.0]

        async def aembed_query(self, text: str) -> list[float]:
            self.async_queries.append(text)
            return self.embed_query(text)

    embeddings = TopicEmbeddings()
    drpo = DRPORunnable.from_artifact(ARTIFACT, k=1, embeddings=embeddings)
    model = RecordingChatModel()
    chain = drpo | model

    async def run() -> list[dict[str, Any]]:
        events = []
        async for event in chain.astream_events(QUESTION, version="v2"):
            if event["event"] == "on_custom_event" and event["name"] == ALIGNMENT_EVENT:
                events.append(event["data"])
        return events

    events = asyncio.run(run())
    assert embeddings.async_queries == [QUESTION]
    assert layout(model.seen[0]) == expected(SYSTEM, [1], ("human", QUESTION))
    assert events == [
        {
            "system_prompt": SYSTEM,
            "example_indices": [1],
            "example_queries": [EXAMPLES[1]["query"]],
            "similarities": [1.0],
        }
    ]
    assert json.dumps(events)  # the trace record is plain JSON
    assert isinstance(drpo.aligner, DRPOAligner)


def test_the_example_runs_offline() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "drpo_langchain.py"
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.splitlines()[0].startswith("system: 'You are a helpful, honest and harmless")
    assert " human: 'What causes ocean tides?'" in out
    assert "answer: Why are there two tides a day? Explain the physics step by step." in out
