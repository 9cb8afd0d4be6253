"""BPO as a LlamaIndex query transform: the answering LLM sees the optimized query.

Retrieval embeds the user's original query by default. A BPO rewrite adds instructions for the
answering model ("answer in detail, step by step, cite sources") that carry no topical content;
embedded, they pull the query vector away from the documents the user asked about.

With no optimizer given, the transform uses the embedded default BPO model, as ``BPORunnable``
and ``BPOMiddleware`` do, not ``Settings.llm``: that is the model answering the query, and making
it the optimizer too would add a call of it to every query and swap the trained BPO model for the
weaker "ask the LLM to improve the prompt" baseline. ``BPOQueryTransform(Settings.llm)`` does
that when wanted (``HyDEQueryTransform``'s habit).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle, QueryType
from llama_index.core.settings import Settings

from bpo_integrations._faces import as_optimizer
from bpo_integrations.result import OptimizationResult

EmbedMode = Literal["original", "optimized", "both"]

dispatcher = get_dispatcher(__name__)

PROMPT_KEY = "bpo_prompt"
"""The key of the optimizer's prompt in ``get_prompts()`` (LLM backends only)."""

CALLBACK_PAYLOAD_KEY = "bpo"
"""The key of the optimization record in the legacy ``CallbackManager``'s event payload."""


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

    The legacy ``CallbackManager`` (``Settings.callback_manager`` unless one is given) sees each
    optimization as a ``CBEventType.QUERY`` event whose start payload holds the original query
    and whose end payload holds the record under ``"bpo"``.

    ``TransformQueryEngine`` calls the synchronous :meth:`run` even from ``aquery``, which blocks
    the event loop while the optimizer's backend answers. For async code use
    :class:`~bpo_integrations.llama_index.BPOTransformQueryEngine`, whose ``aquery`` awaits
    :meth:`arun`, or await :meth:`arun` yourself.

    Args:
        optimizer: a :class:`BPOOptimizer`; a backend, or a LlamaIndex or LangChain LLM
            (``Settings.llm``, ``OpenAILike(...)``: see :meth:`BPOOptimizer.from_llm`), to build
            one with default settings; nothing: the embedded default BPO model.
        embed: what retrieval embeds: ``"original"`` (the user's query, or the bundle's own
            ``custom_embedding_strs``), ``"optimized"`` (the rewrite) or ``"both"`` (their mean
            embedding).
        callback_manager: the legacy callback manager to tell; ``None``:
            ``Settings.callback_manager`` at each call.

    With an LLM as the optimizer, its prompt is ``get_prompts()["bpo_prompt"]``, a
    ``PromptTemplate`` with a ``{prompt}`` variable, and ``update_prompts`` swaps it. The
    backends of a trained BPO model (TGI, OpenAI-compatible, local) apply the fixed template the
    model was trained on, and expose no prompt.

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

    def __init__(
        self,
        optimizer: Any = None,
        *,
        embed: EmbedMode = "original",
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__()
        if embed not in get_args(EmbedMode):
            raise ValueError(
                f"embed must be one of {get_args(EmbedMode)}, got {embed!r}: 'original' embeds "
                "the user's query, 'optimized' the rewrite, 'both' their mean"
            )
        self.optimizer = as_optimizer(optimizer, "BPOQueryTransform")
        self.embed: EmbedMode = embed
        self.callback_manager = callback_manager

    def __repr__(self) -> str:
        return f"BPOQueryTransform(optimizer={self.optimizer!r}, embed={self.embed!r})"

    def _get_prompts(self) -> PromptDictType:
        template = getattr(self.optimizer.backend, "prompt_template", None)
        return {PROMPT_KEY: PromptTemplate(template)} if isinstance(template, str) else {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        unknown = sorted(set(prompts) - {PROMPT_KEY})
        if unknown:
            raise ValueError(f"BPOQueryTransform has one prompt, {PROMPT_KEY!r}; got {unknown}")
        if PROMPT_KEY not in prompts:
            return
        backend = self.optimizer.backend
        if not isinstance(getattr(backend, "prompt_template", None), str):
            raise ValueError(
                f"the {backend.name} backend applies the fixed instruction its BPO model was "
                "trained on, so BPOQueryTransform has no prompt to update. To rewrite with a "
                "prompt of your own, give it an LLM: BPOQueryTransform(llm) (another backend)."
            )
        backend.prompt_template = prompts[PROMPT_KEY].get_template()  # type: ignore[attr-defined]

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
        tell_callback_manager(self.callback_manager, result)
        return bundle


def tell_callback_manager(
    callback_manager: CallbackManager | None, result: OptimizationResult
) -> None:
    """Send ``result`` to LlamaIndex's legacy callback handlers as a ``QUERY`` event."""
    manager = callback_manager or Settings.callback_manager
    if not manager.handlers:
        return
    with manager.event(
        CBEventType.QUERY, payload={EventPayload.QUERY_STR: result.original}
    ) as event:
        event.on_end(payload={CALLBACK_PAYLOAD_KEY: result.to_dict()})


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
