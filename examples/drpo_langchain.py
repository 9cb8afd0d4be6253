"""DRPO and BPO in one LangChain chain: ``prompt | bpo | drpo | model``.

BPO rewrites the user's prompt; DRPO then puts the searched system prompt and the K in-context
examples most similar to it in front, as a system message and human / AI turns. Runs offline as
written: a plain function stands in for the BPO model, a small built-in alignment stands in for
the one ``bpo-train drpo`` writes, and ``ParrotFakeChatModel`` answers with the last message it
gets. Set ``DRPO_ARTIFACT=runs/drpo/alignment.json`` to use yours.

    python examples/drpo_langchain.py
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.language_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.langchain import BPORunnable, DRPORunnable

DEMO_ALIGNMENT: dict[str, Any] = {
    "format": "drpo-alignment/1",
    "system_prompt": (
        "You are a helpful, honest and harmless assistant. Answer accurately and in depth, "
        "say when you are unsure, and decline harmful requests.\n"
        "- You cannot browse the internet or take actions in the world.\n"
        "- Structure longer answers with short points and end with a brief summary."
    ),
    "k": 2,
    "examples": [
        {
            "query": "What causes ocean tides?",
            "response": "Mainly the Moon's gravity: it pulls the ocean nearest to it ...",
        },
        {
            "query": "How do I keep a basil plant alive indoors?",
            "response": "Give it 6+ hours of light, water when the topsoil is dry ...",
        },
        {
            "query": "What is the physics behind the northern lights?",
            "response": "Charged particles from the Sun meet Earth's magnetic field ...",
        },
        {
            "query": "Why is the sky blue?",
            "response": "Sunlight scatters off air molecules, blue light most strongly ...",
        },
    ],
}


def stand_in_bpo(prompt: str) -> str:
    return f"{prompt} Explain the physics step by step."


def main() -> None:
    artifact = os.environ.get("DRPO_ARTIFACT") or DEMO_ALIGNMENT
    drpo = DRPORunnable.from_artifact(artifact)
    bpo = BPORunnable(optimizer=BPOOptimizer(CallableBackend(stand_in_bpo)))
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])

    # What the model receives: system prompt, 2 retrieved examples, the optimized question.
    value = (prompt | bpo | drpo).invoke({"question": "Why are there two tides a day?"})
    for message in value.messages:
        print(f"{message.type:>6}: {message.content[:90]!r}")

    chain = prompt | bpo | drpo | ParrotFakeChatModel() | StrOutputParser()
    print("answer:", chain.invoke({"question": "Why are there two tides a day?"}))


if __name__ == "__main__":
    main()
