"""BPO between a prompt template and a chat model: ``prompt | bpo | model``.

Runs offline as written: a plain function stands in for the BPO model, and
``ParrotFakeChatModel`` answers with the last message it receives (so you see what the model was
asked). To optimize with a real BPO model, start a server (``bpo serve --port 8080`` or TGI with
``--model-id THUDM/BPO``) and set ``BPO_TGI_URL=http://localhost:8080``; replace the parrot with
your own chat model.

    python examples/langchain_lcel.py
"""

from __future__ import annotations

import asyncio
import os

from langchain_core.language_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import Backend, CallableBackend
from bpo_integrations.langchain import OPTIMIZATION_EVENT, BPORunnable


def stand_in_bpo(prompt: str) -> str:
    """What a BPO model does to a terse question: spell out what a helpful answer contains."""
    return f"{prompt} Explain the physics step by step, and mention what we see at sunset."


def make_backend() -> Backend:
    url = os.environ.get("BPO_TGI_URL")
    if url:
        from bpo_integrations.backends import TGIBackend

        return TGIBackend(url)
    return CallableBackend(stand_in_bpo)


def main() -> None:
    bpo = BPORunnable(optimizer=BPOOptimizer(make_backend()), mode="stable")
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a patient physics teacher."), ("human", "{question}")]
    )
    chain = prompt | bpo | ParrotFakeChatModel() | StrOutputParser()

    print("the model was asked:", chain.invoke({"question": "Why is the sky blue?"}))

    # batch: every question is optimized in one optimize_batch call.
    for answer in chain.batch(
        [{"question": "Why do stars twinkle?"}, {"question": "What is a rainbow?"}]
    ):
        print("batched:", answer)

    # Each optimization is a child run "bpo_optimize" (LangSmith shows it) and a custom event.
    async def show_events() -> None:
        async for event in chain.astream_events({"question": "Why is the sea blue?"}):
            if event["event"] == "on_custom_event" and event["name"] == OPTIMIZATION_EVENT:
                print("original:", event["data"]["original"])
                print("optimized:", event["data"]["optimized"])
                print("bpo fell back:", event["data"]["fell_back"])

    asyncio.run(show_events())


if __name__ == "__main__":
    main()
