"""BPO in a LangChain agent: ``create_agent(..., middleware=[BPOMiddleware(optimizer)])``.

Runs offline as written: a plain function stands in for the BPO model, and a scripted chat model
stands in for yours (it calls the weather tool, then answers, and prints what it was shown). To
use real models, set ``BPO_TGI_URL=http://localhost:8080`` (a BPO server: ``bpo serve --port 8080``
or TGI with ``--model-id THUDM/BPO``) and ``BPO_AGENT_MODEL`` to a ``init_chat_model`` id such as
``openai:gpt-4o-mini`` (needs that provider's package and key).

    python examples/langchain_agent.py
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import Backend, CallableBackend
from bpo_integrations.langchain import BPOMiddleware

QUESTION = "What's the weather in Paris?"


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny, 24 degrees Celsius in {city}."


def stand_in_bpo(prompt: str) -> str:
    """What a BPO model does to a terse question: spell out what a helpful answer contains."""
    return f"{prompt} Give the temperature in Celsius and say whether to take an umbrella."


class ScriptedModel(GenericFakeChatModel):
    """Plays scripted answers (tool calls included) and prints the user turn it was shown."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        shown = [m.text for m in messages if isinstance(m, HumanMessage)]
        print("the model was shown:", shown[-1])
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kw)


def make_backend() -> Backend:
    url = os.environ.get("BPO_TGI_URL")
    if url:
        from bpo_integrations.backends import TGIBackend

        return TGIBackend(url)
    return CallableBackend(stand_in_bpo)


def make_model() -> BaseChatModel:
    name = os.environ.get("BPO_AGENT_MODEL")
    if name:
        from langchain.chat_models import init_chat_model

        return init_chat_model(name)
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}
    return ScriptedModel(
        messages=iter([AIMessage("", tool_calls=[call]), AIMessage("Sunny, 24 °C: no umbrella.")])
    )


def main() -> None:
    agent = create_agent(
        make_model(),
        tools=[get_weather],
        system_prompt="You are a helpful weather assistant.",
        middleware=[BPOMiddleware(BPOOptimizer(make_backend()))],
        checkpointer=InMemorySaver(),
    )
    state = agent.invoke(
        {"messages": [HumanMessage(QUESTION)]}, {"configurable": {"thread_id": "demo"}}
    )

    records = state["bpo_optimizations"]
    print("optimizations this turn:", len(records))
    print("state keeps:", state["messages"][0].text)
    print("optimized:", next(iter(records.values()))["optimized"])
    print("answer:", state["messages"][-1].text)


if __name__ == "__main__":
    main()
