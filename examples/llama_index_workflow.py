"""BPO as a step of a LlamaIndex ``Workflow``: optimize the query, then answer it.

llama-index-core 0.14 has no QueryPipeline; a workflow is how to chain steps. Runs offline as
written (``MockLLM``, ``MockEmbedding``, a function standing in for the BPO model); in production
use e.g. ``BPOOptimizer(TGIBackend("http://localhost:8080"))`` and your own LLM and embedder.

    python examples/llama_index_workflow.py
"""

from __future__ import annotations

import asyncio

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import QueryBundle
from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.llama_index import BPOQueryTransform

Settings.llm = MockLLM()
Settings.embed_model = MockEmbedding(embed_dim=8)


class OptimizedQuery(Event):
    """The query after BPO: ``query_str`` for the LLM, ``custom_embedding_strs`` for retrieval."""

    bundle: QueryBundle


class BPOQueryWorkflow(Workflow):
    """Two steps: BPO rewrites the query, then the query engine retrieves and answers."""

    def __init__(
        self, transform: BPOQueryTransform, query_engine: BaseQueryEngine, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.transform = transform
        self.query_engine = query_engine

    @step
    async def optimize(self, ev: StartEvent) -> OptimizedQuery:
        return OptimizedQuery(bundle=await self.transform.arun(ev.query))

    @step
    async def answer(self, ev: OptimizedQuery) -> StopEvent:
        response = await self.query_engine.aquery(ev.bundle)
        optimization = getattr(ev.bundle, "optimization", None)
        return StopEvent(result={"response": response, "optimization": optimization})


async def main() -> None:
    index = VectorStoreIndex.from_documents(
        [
            Document(text="Cats purr when content and also when hurt.", doc_id="cat-facts"),
            Document(text="Dogs bark to warn and to greet.", doc_id="dog-facts"),
        ]
    )
    optimizer = BPOOptimizer(CallableBackend(lambda p: f"{p} Explain the mechanism step by step."))
    workflow = BPOQueryWorkflow(
        BPOQueryTransform(optimizer), index.as_query_engine(similarity_top_k=2), timeout=60
    )
    result = await workflow.run(query="Why do cats purr?")
    optimization = result["optimization"]
    print("optimized query:", optimization.optimized)
    print("bpo fell back:", optimization.fell_back)
    print("retrieved:", ", ".join(n.node.ref_doc_id for n in result["response"].source_nodes))
    print("the LLM was asked:", str(result["response"]).split("Query: ")[-1].split("\nAnswer:")[0])


if __name__ == "__main__":
    asyncio.run(main())
