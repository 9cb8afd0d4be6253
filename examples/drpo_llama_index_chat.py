"""DRPO in a LlamaIndex chat engine: each user message gets the searched system prompt and the K
most similar in-context examples in front of it; memory keeps only the real conversation.

Runs offline as written with ``MockLLM`` (it answers with the prompt it was given, so you see
what the LLM receives) and a small built-in alignment; set ``DRPO_ARTIFACT`` to the
``alignment.json`` written by ``bpo-train drpo`` and pass your own LLM.

    python examples/drpo_llama_index_chat.py
"""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.llms import MockLLM

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.llama_index import DRPOChatEngine

DEMO_ALIGNMENT: dict[str, Any] = {
    "format": "drpo-alignment/1",
    "system_prompt": "You are a helpful, honest assistant. Say when you are unsure.",
    "k": 1,
    "examples": [
        {"query": "What causes ocean tides?", "response": "Mainly the Moon's gravity ..."},
        {"query": "How do I keep basil alive indoors?", "response": "Plenty of light ..."},
    ],
}


def main() -> None:
    artifact = os.environ.get("DRPO_ARTIFACT") or DEMO_ALIGNMENT
    engine = DRPOChatEngine.from_artifact(artifact, llm=MockLLM())
    for question in ("Why are there two tides a day?", "My basil is wilting. Why?"):
        print(engine.chat(question).response, end="\n\n")
    print("memory:", [m.role.value for m in engine.chat_history])

    # With BPO: optimize the message, then chat with the rewrite (BPO sees only the user's text).
    optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Answer step by step."))
    engine.reset()
    print(engine.chat(optimizer.optimize("Why is the sea salty?").optimized).response)


if __name__ == "__main__":
    main()
