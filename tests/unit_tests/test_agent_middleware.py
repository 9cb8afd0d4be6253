"""BPOMiddleware in a real ``create_agent`` graph: one optimization per user turn, the model sees
the rewrite on every call of the turn, and the agent state keeps what the user wrote."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("langchain.agents", reason="needs the agents extra: pip install -e '.[agents]'")

from example_runs import run_example_offline
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import BackendUnavailableError
from bpo_integrations.langchain import OPTIMIZATION_EVENT, BPOMiddleware
from bpo_integrations.testing.backends import RecordingBackend

SUFFIX = " Give the temperature in Celsius."
FIRST = "What's the weather in Paris?"
SECOND = "And in Rome?"


class ToolCallingFakeModel(GenericFakeChatModel):
    """Plays scripted answers (tool calls included) and keeps the messages of every call."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolCallingFakeModel:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny, 24 degrees in {city}."


def weather_call(city: str, call_id: str) -> AIMessage:
    return AIMessage(
        "", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": call_id}]
    )


def script() -> Iterator[AIMessage]:
    """Turn 1: a tool call, then the answer (two model calls). Turn 2: the same again."""
    return iter(
        [
            weather_call("Paris", "call_1"),
            AIMessage("Sunny and 24 °C in Paris."),
            weather_call("Rome", "call_2"),
            AIMessage("Sunny and 24 °C in Rome."),
        ]
    )


def human_texts(messages: list[BaseMessage]) -> list[str]:
    return [m.text for m in messages if isinstance(m, HumanMessage)]


class EventCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend(SUFFIX)


@pytest.fixture
def optimizer(backend: RecordingBackend) -> BPOOptimizer:
    # No cache: a second optimization of the same turn would reach the backend and be counted.
    return BPOOptimizer(backend, cache_size=0)


def make_agent(model: ToolCallingFakeModel, middleware: BPOMiddleware) -> Any:
    return create_agent(
        model, tools=[get_weather], middleware=[middleware], checkpointer=InMemorySaver()
    )


def check_two_turns(
    states: list[dict[str, Any]], model: ToolCallingFakeModel, backend: RecordingBackend
) -> None:
    first, second = states
    # Turn 1: two model calls, one optimization; the model saw the rewrite on both calls.
    assert len(model.seen) == 4
    assert human_texts(model.seen[0]) == [FIRST + SUFFIX]
    assert human_texts(model.seen[1]) == [FIRST + SUFFIX]
    assert model.seen[1][-1].type == "tool"  # the second call is the tool-loop step
    # Turn 2: one more optimization; earlier turns are shown as they were optimized.
    assert human_texts(model.seen[2]) == [FIRST + SUFFIX, SECOND + SUFFIX]
    assert human_texts(model.seen[3]) == [FIRST + SUFFIX, SECOND + SUFFIX]
    assert backend.prompts == [FIRST, SECOND]

    # The state keeps what the user wrote, and the rewrites beside it, keyed by message id.
    assert human_texts(first["messages"]) == [FIRST]
    assert human_texts(second["messages"]) == [FIRST, SECOND]
    records = second["bpo_optimizations"]
    humans = [m for m in second["messages"] if isinstance(m, HumanMessage)]
    assert [records[m.id]["optimized"] for m in humans] == [FIRST + SUFFIX, SECOND + SUFFIX]
    assert all(not records[m.id]["fell_back"] for m in humans)
    assert second["messages"][-1].content == "Sunny and 24 °C in Rome."


def test_one_optimization_per_user_turn(optimizer: BPOOptimizer, backend: RecordingBackend) -> None:
    model = ToolCallingFakeModel(messages=script())
    agent = make_agent(model, BPOMiddleware(optimizer))
    config = {"configurable": {"thread_id": "sync"}}

    first = agent.invoke({"messages": [HumanMessage(FIRST)]}, config)
    assert backend.prompts == [FIRST]
    second = agent.invoke({"messages": [HumanMessage(SECOND)]}, config)

    check_two_turns([first, second], model, backend)


async def test_one_optimization_per_user_turn_async(
    optimizer: BPOOptimizer, backend: RecordingBackend
) -> None:
    model = ToolCallingFakeModel(messages=script())
    agent = make_agent(model, BPOMiddleware(optimizer))
    config = {"configurable": {"thread_id": "async"}}

    first = await agent.ainvoke({"messages": [HumanMessage(FIRST)]}, config)
    assert backend.prompts == [FIRST]
    second = await agent.ainvoke({"messages": [HumanMessage(SECOND)]}, config)

    check_two_turns([first, second], model, backend)


async def test_async_rewrite_function_is_awaited() -> None:
    async def rewrite(prompt: str) -> str:
        return prompt + SUFFIX

    model = ToolCallingFakeModel(messages=script())
    agent = make_agent(model, BPOMiddleware(CallableBackend(rewrite)))
    await agent.ainvoke({"messages": [HumanMessage(FIRST)]}, {"configurable": {"thread_id": "t"}})
    assert human_texts(model.seen[1]) == [FIRST + SUFFIX]


def test_optimize_history_false_shows_earlier_turns_as_written(
    optimizer: BPOOptimizer,
) -> None:
    model = ToolCallingFakeModel(messages=script())
    agent = make_agent(model, BPOMiddleware(optimizer, optimize_history=False))
    config = {"configurable": {"thread_id": "latest-only"}}
    agent.invoke({"messages": [HumanMessage(FIRST)]}, config)
    agent.invoke({"messages": [HumanMessage(SECOND)]}, config)
    assert human_texts(model.seen[3]) == [FIRST, SECOND + SUFFIX]


def test_fallback_never_breaks_the_agent() -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused: http://127.0.0.1:9")

    model = ToolCallingFakeModel(messages=script())
    optimizer = BPOOptimizer(CallableBackend(down), max_retries=0)
    agent = make_agent(model, BPOMiddleware(optimizer))
    state = agent.invoke({"messages": [HumanMessage(FIRST)]}, {"configurable": {"thread_id": "f"}})

    assert state["messages"][-1].content == "Sunny and 24 °C in Paris."
    assert [human_texts(seen) for seen in model.seen] == [[FIRST], [FIRST]]
    (record,) = state["bpo_optimizations"].values()
    assert record["fell_back"] is True
    assert record["fallback_reason"].startswith("backend_unavailable")


def test_multimodal_turn_keeps_the_image(optimizer: BPOOptimizer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    message = HumanMessage([{"type": "text", "text": "What city is this?"}, image])
    model = ToolCallingFakeModel(messages=iter([AIMessage("Paris.")]))
    agent = make_agent(model, BPOMiddleware(optimizer))
    state = agent.invoke({"messages": [message]}, {"configurable": {"thread_id": "image"}})

    seen = model.seen[0][0].content
    assert seen == [{"type": "text", "text": "What city is this?" + SUFFIX}, image]
    assert state["messages"][0].content == message.content


def test_image_only_turn_optimizes_nothing(
    optimizer: BPOOptimizer, backend: RecordingBackend
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    model = ToolCallingFakeModel(messages=iter([AIMessage("A cat.")]))
    agent = make_agent(model, BPOMiddleware(optimizer))
    history = [HumanMessage("Describe it."), AIMessage("Send it."), HumanMessage([image])]
    agent.invoke({"messages": history}, {"configurable": {"thread_id": "image-only"}})

    # The newest turn has no text: an older text turn is not optimized in its place.
    assert backend.prompts == []
    assert model.seen[0][-1].content == [image]


def test_edited_turn_is_optimized_again(optimizer: BPOOptimizer, backend: RecordingBackend) -> None:
    model = ToolCallingFakeModel(messages=iter([AIMessage("One."), AIMessage("Two.")]))
    agent = make_agent(model, BPOMiddleware(optimizer))
    config = {"configurable": {"thread_id": "edit"}}
    agent.invoke({"messages": [HumanMessage("Version one?", id="turn-1")]}, config)
    # add_messages replaces a message that has the same id: the user edited the turn.
    agent.invoke({"messages": [HumanMessage("Version two?", id="turn-1")]}, config)

    assert backend.prompts == ["Version one?", "Version two?"]
    assert human_texts(model.seen[1]) == ["Version two?" + SUFFIX]


def test_callbacks_receive_the_optimization_event(optimizer: BPOOptimizer) -> None:
    model = ToolCallingFakeModel(messages=script())
    agent = make_agent(model, BPOMiddleware(optimizer))
    collector = EventCollector()
    agent.invoke(
        {"messages": [HumanMessage(FIRST)]},
        {"configurable": {"thread_id": "events"}, "callbacks": [collector]},
    )
    ((name, data),) = collector.events
    assert name == OPTIMIZATION_EVENT
    assert (data["original"], data["optimized"]) == (FIRST, FIRST + SUFFIX)


def test_constructor_validates_arguments(optimizer: BPOOptimizer) -> None:
    with pytest.raises(
        TypeError, match=r"BPOMiddleware takes a BPOOptimizer, a Backend, .* got str"
    ):
        BPOMiddleware("http://localhost:8080")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        BPOMiddleware(optimizer, iterations=0)
    with pytest.raises(ValueError, match="unknown mode 'wild'"):
        BPOMiddleware(optimizer, mode="wild")  # type: ignore[arg-type]


def test_agent_example_runs_offline() -> None:
    out = run_example_offline("langchain_agent.py")
    assert out.returncode == 0, out.stderr
    assert "optimizations this turn: 1" in out.stdout
    assert "state keeps: What's the weather in Paris?" in out.stdout
