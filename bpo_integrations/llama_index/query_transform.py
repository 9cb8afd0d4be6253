"""BPO as a LlamaIndex query transform: the answering LLM sees the optimized query.

Retrieval embeds the user's original query by default. A BPO rewrite adds instructions for the
answering model ("answer in detail, step by step, cite sources") that carry no topical content;
embedded, they pull the query vector away from the documents the user asked about.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle, QueryType

from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.result import OptimizationResult

EmbedMode = Literal["original", "optimized", "both"]

dispatcher = get_dispatcher(__name__)


@dataclasses.dataclass
class BPOQueryBundle(QueryBundle):
    """A :class:`QueryBundle` whose ``query_str`` BPO rewrote; ``optimization`` says how."""

    optimization: OptimizationResult | None = None


class BPOQueryOptimizedEvent(BaseEvent):
    """Instrumentation event sent once per optimized query, inside the transform's span.

    ``embedding_strs`` are the texts retrieval will embed.
    """

    result: OptimizationResult
    query_str: str
    embedding_strs: list[str]

    @classmethod
    def class_name(cls) -> str:
        return "BPOQueryOptimizedEvent"


class BPOQueryTransform(BaseQueryTransform):
    """Rewrites the query with BPO for synthesis; retrieval embeds the original query by default.

    The returned :class:`BPOQueryBundle` carries the :class:`OptimizationResult` in
    ``optimization``, and a :class:`BPOQueryOptimizedEvent` goes to the instrumentation
    dispatcher. When the optimizer falls back (backend down, timeout, rejected rewrite), the
    query passes through unchanged and ``optimization.fell_back`` says why.

    ``TransformQueryEngine`` calls the synchronous :meth:`run` even from ``aquery``, which blocks
    the event loop while the optimizer's backend answers. For async code use
    :class:`~bpo_integrations.llama_index.BPOTransformQueryEngine`, whose ``aquery`` awaits
    :meth:`arun`, or await :meth:`arun` yourself.

    Args:
        optimizer: the :class:`BPOOptimizer` that rewrites queries.
        embed: what retrieval embeds: ``"original"`` (the user's query, or the bundle's own
            ``custom_embedding_strs``), ``"optimized"`` (the rewrite) or ``"both"`` (their mean
            embedding).

    Example:
        >>> from llama_index.core import Document, VectorStoreIndex
        >>> from llama_index.core.embeddings import MockEmbedding
        >>> from llama_index.core.llms import MockLLM
        >>> from llama_index.core.query_engine import TransformQueryEngine
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> from bpo_integrations.llama_index import BPOQueryTransform
        >>> index = VectorStoreIndex.from_documents(
        ...     [Document(text="BPO rewrites prompts.")], embed_model=MockEmbedding(embed_dim=8)
        ... )
        >>> optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Answer in one sentence."))
        >>> transform = BPOQueryTransform(optimizer)
        >>> engine = TransformQueryEngine(index.as_query_engine(llm=MockLLM()), transform)
        >>> answer = engine.query("What does BPO do?")  # MockLLM answers with its own prompt
        >>> "Query: What does BPO do? Answer in one sentence." in str(answer)
        True
        >>> bundle = transform.run("What does BPO do?")
        >>> bundle.query_str, bundle.custom_embedding_strs
        ('What does BPO do? Answer in one sentence.', ['What does BPO do?'])
    """

    def __init__(self, optimizer: BPOOptimizer, *, embed: EmbedMode = "original") -> None:
        super().__init__()
        if not isinstance(optimizer, BPOOptimizer):
            raise TypeError(
                f"optimizer must be a BPOOptimizer, got {type(optimizer).__name__}; build one "
                "with BPOOptimizer(backend), e.g. BPOOptimizer(TGIBackend(url))"
            )
        if embed not in get_args(EmbedMode):
            raise ValueError(
                f"embed must be one of {get_args(EmbedMode)}, got {embed!r}: 'original' embeds "
                "the user's query, 'optimized' the rewrite, 'both' their mean"
            )
        self.optimizer = optimizer
        self.embed: EmbedMode = embed

    def __repr__(self) -> str:
        return f"BPOQueryTransform(optimizer={self.optimizer!r}, embed={self.embed!r})"

    def _get_prompts(self) -> PromptDictType:
        # The BPO instruction is the one the model was trained on; the backend applies it.
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if prompts:
            raise ValueError(
                f"BPOQueryTransform has no prompt templates to update (got {sorted(prompts)}): "
                "the BPO model was trained on one fixed instruction, which its backend applies. "
                "To rewrite differently, give the BPOOptimizer another backend."
            )

    def _run(self, query_bundle: QueryBundle, metadata: dict[str, Any]) -> QueryBundle:
        if _already_optimized(query_bundle):
            return query_bundle
        result = self.optimizer.optimize(query_bundle.query_str)
        return self._optimized_bundle(query_bundle, result)

    @dispatcher.span
    async def arun(
        self, query_bundle_or_str: QueryType, metadata: dict[str, Any] | None = None
    ) -> QueryBundle:
        """Async twin of :meth:`run`: awaits the optimizer instead of blocking the loop."""
        query_bundle = _as_bundle(query_bundle_or_str)
        if _already_optimized(query_bundle):
            return query_bundle
        result = await self.optimizer.aoptimize(query_bundle.query_str)
        return self._optimized_bundle(query_bundle, result)

    def _optimized_bundle(
        self, query_bundle: QueryBundle, result: OptimizationResult
    ) -> BPOQueryBundle:
        original_strs = list(query_bundle.embedding_strs)
        if self.embed == "original":
            embedding_strs = original_strs
        elif self.embed == "optimized":
            embedding_strs = [result.text]
        else:
            extra = [] if result.text in original_strs else [result.text]
            embedding_strs = [*original_strs, *extra]
        # A precomputed embedding belongs to the original query; keep it only where that is used.
        embedding = query_bundle.embedding if self.embed == "original" else None
        bundle = BPOQueryBundle(
            query_str=result.text,
            image_path=query_bundle.image_path,
            custom_embedding_strs=embedding_strs,
            embedding=embedding,
            optimization=result,
        )
        dispatcher.event(
            BPOQueryOptimizedEvent(
                result=result, query_str=bundle.query_str, embedding_strs=embedding_strs
            )
        )
        return bundle


def _as_bundle(query_bundle_or_str: QueryType) -> QueryBundle:
    if isinstance(query_bundle_or_str, str):
        return QueryBundle(
            query_str=query_bundle_or_str, custom_embedding_strs=[query_bundle_or_str]
        )
    if not isinstance(query_bundle_or_str, QueryBundle):
        raise TypeError(
            f"a query must be a str or a QueryBundle, got {type(query_bundle_or_str).__name__}"
        )
    return query_bundle_or_str


def _already_optimized(query_bundle: QueryBundle) -> bool:
    # TransformQueryEngine runs the transform in both retrieve() and synthesize().
    return isinstance(query_bundle, BPOQueryBundle) and query_bundle.optimization is not None
