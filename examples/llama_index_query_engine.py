"""BPO in front of a LlamaIndex query engine: the LLM answers the optimized query.

Runs offline as written: ``MockLLM`` echoes the prompt it receives (so you see what the LLM was
asked), ``MockEmbedding`` stands in for an embedder, and a plain function stands in for the BPO
model. In production, point the optimizer at a BPO server instead, e.g.
``BPOOptimizer(TGIBackend("http://localhost:8080"))``, and use your own LLM and embedder.

    python examples/llama_index_query_engine.py
"""

from __future__ import annotations

import asyncio

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import TransformQueryEngine

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.llama_index import BPOQueryTransform, BPOTransformQueryEngine

Settings.llm = MockLLM()
Settings.embed_model = MockEmbedding(embed_dim=8)

QUESTION = "Why do cats purr?"


def stand_in_bpo(prompt: str) -> str:
    """What a BPO model does to a terse question: spell out what a helpful answer contains."""
    return f"{prompt} Explain the mechanism step by step, and when else cats purr."


def main() -> None:
    index = VectorStoreIndex.from_documents(
        [
            Document(text="Cats purr when content and also when hurt.", doc_id="cat-facts"),
            Document(text="Dogs bark to warn and to greet.", doc_id="dog-facts"),
        ]
    )
    transform = BPOQueryTransform(BPOOptimizer(CallableBackend(stand_in_bpo)))  # embed="original"

    # Sync: LlamaIndex's own TransformQueryEngine is enough.
    engine = TransformQueryEngine(index.as_query_engine(similarity_top_k=1), transform)
    response = engine.query(QUESTION)
    print("the LLM was asked:", str(response).split("Query: ")[-1].split("\nAnswer:")[0])

    bundle = transform.run(QUESTION)
    print("retrieval embeds:", bundle.custom_embedding_strs)

    # Async: BPOTransformQueryEngine awaits the optimizer instead of blocking the event loop, and
    # records the optimization in response.metadata["bpo"].
    async_engine = BPOTransformQueryEngine(index.as_query_engine(similarity_top_k=1), transform)
    response = asyncio.run(async_engine.aquery(QUESTION))
    record = response.metadata["bpo"]
    print("optimized query:", record["optimized"])
    print("bpo fell back:", record["fell_back"])


if __name__ == "__main__":
    main()
