"""BPO in a LlamaIndex chat engine: the LLM answers the rewrite, the conversation keeps your words.

``BPOChatEngine`` wraps ``index.as_chat_engine(...)``: each message is optimized, retrieval (and
the condense step) use the message as written, the LLM is asked the rewrite, and memory stores
the original, so later turns read the conversation the user really had.

Runs offline as written: ``MockLLM`` echoes the prompt it receives (so you see what the LLM was
asked), ``MockEmbedding`` stands in for an embedder, a plain function for the BPO model. In
production give it a BPO server (``TGIBackend("http://localhost:8080")``), or your own LLM
(``BPOChatEngine(engine, Settings.llm)``), and use your own LLM and embedder.

    python examples/llama_index_chat_engine.py
"""

from __future__ import annotations

import asyncio

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from bpo_integrations.backends import CallableBackend
from bpo_integrations.llama_index import BPOChatEngine

Settings.llm = MockLLM()
Settings.embed_model = MockEmbedding(embed_dim=8)


def stand_in_bpo(prompt: str) -> str:
    """What a BPO model does to a terse question: spell out what a helpful answer contains."""
    return f"{prompt} Explain the mechanism step by step."


def last_user_turn(echoed_prompt: str) -> str:
    return echoed_prompt.rsplit("user: ", 1)[-1].removesuffix("\nassistant: ").strip()


def main() -> None:
    index = VectorStoreIndex.from_documents(
        [Document(text="Cats purr when content and also when hurt.", doc_id="cat-facts")]
    )
    engine = BPOChatEngine(
        index.as_chat_engine(chat_mode="condense_plus_context"), CallableBackend(stand_in_bpo)
    )

    response = engine.chat("Why do cats purr?")
    print("the LLM was asked:", last_user_turn(response.response))
    print("retrieved:", [node.node.ref_doc_id for node in response.source_nodes])
    print("bpo fell back:", response.metadata["bpo"]["fell_back"])

    response = asyncio.run(engine.achat("And when they are hurt?"))
    print("then:", last_user_turn(response.response))
    print("memory:", [m.content for m in engine.chat_history if m.role.value == "user"])


if __name__ == "__main__":
    main()
