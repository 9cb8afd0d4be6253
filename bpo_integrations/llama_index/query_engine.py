"""A ``TransformQueryEngine`` whose async path awaits the transform instead of blocking the loop.

LlamaIndex's ``TransformQueryEngine._aquery`` calls the transform's synchronous ``run``: a
transform that waits on a network backend stalls every other task on the event loop meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.query_engine import TransformQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle

from bpo_integrations.llama_index.query_transform import BPOQueryBundle

METADATA_KEY = "bpo"
"""The key of the optimization record in ``response.metadata``."""


class BPOTransformQueryEngine(TransformQueryEngine):
    """Applies a query transform, awaiting it in async calls, and records BPO in the response.

    Same arguments as ``TransformQueryEngine``. ``aquery``, ``aretrieve`` and ``asynthesize`` await
    the transform's ``arun`` when it has one (as :class:`BPOQueryTransform` does) and otherwise
    run its ``run`` in a worker thread, so the event loop stays free. Responses carry the
    optimization record (:meth:`OptimizationResult.to_dict`) under ``response.metadata["bpo"]``.

    Example:
        >>> import asyncio
        >>> from llama_index.core import Document, VectorStoreIndex
        >>> from llama_index.core.embeddings import MockEmbedding
        >>> from llama_index.core.llms import MockLLM
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> from bpo_integrations.llama_index import BPOQueryTransform, BPOTransformQueryEngine
        >>> index = VectorStoreIndex.from_documents(
        ...     [Document(text="BPO rewrites prompts.")], embed_model=MockEmbedding(embed_dim=8)
        ... )
        >>> optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Answer in one sentence."))
        >>> engine = BPOTransformQueryEngine(
        ...     index.as_query_engine(llm=MockLLM()), BPOQueryTransform(optimizer)
        ... )
        >>> response = asyncio.run(engine.aquery("What does BPO do?"))
        >>> response.metadata["bpo"]["optimized"]
        'What does BPO do? Answer in one sentence.'
    """

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._query_engine.retrieve(self._transform(query_bundle))

    async def aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Async twin of :meth:`retrieve` (when the wrapped engine has ``aretrieve``)."""
        transformed = await self._atransform(query_bundle)
        aretrieve = getattr(self._query_engine, "aretrieve", None)
        if aretrieve is None:
            return await asyncio.to_thread(self._query_engine.retrieve, transformed)
        return cast(list[NodeWithScore], await aretrieve(transformed))

    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        transformed = self._transform(query_bundle)
        response = self._query_engine.synthesize(
            query_bundle=transformed, nodes=nodes, additional_source_nodes=additional_source_nodes
        )
        return _record(response, transformed)

    async def asynthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        transformed = await self._atransform(query_bundle)
        response = await self._query_engine.asynthesize(
            query_bundle=transformed, nodes=nodes, additional_source_nodes=additional_source_nodes
        )
        return _record(response, transformed)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        transformed = self._transform(query_bundle)
        return _record(self._query_engine.query(transformed), transformed)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        transformed = await self._atransform(query_bundle)
        return _record(await self._query_engine.aquery(transformed), transformed)

    def _transform(self, query_bundle: QueryBundle) -> QueryBundle:
        return self._query_transform.run(query_bundle, metadata=self._transform_metadata)

    async def _atransform(self, query_bundle: QueryBundle) -> QueryBundle:
        arun = getattr(self._query_transform, "arun", None)
        if arun is not None:
            return cast(QueryBundle, await arun(query_bundle, metadata=self._transform_metadata))
        return await asyncio.to_thread(self._transform, query_bundle)


def _record(response: RESPONSE_TYPE, query_bundle: QueryBundle) -> RESPONSE_TYPE:
    if isinstance(query_bundle, BPOQueryBundle) and query_bundle.optimization is not None:
        response.metadata = {
            **(response.metadata or {}),
            METADATA_KEY: query_bundle.optimization.to_dict(),
        }
    return response
