"""BPO in a LlamaIndex chat engine: the LLM answers the rewrite, the rest keeps the user's words.

Optimizing a message by hand before ``chat_engine.chat(rewrite)`` stores the rewrite in memory
and retrieves with it: every later turn then shows the model a conversation the user never had,
and retrieval embeds advice to the model ("explain step by step") instead of the topic.
:class:`BPOChatEngine` passes the engine the user's message, so that retrieval, the condense step
and memory see it unchanged, and swaps in the rewrite only where the engine hands the message to
the LLM: the response synthesizer's query (context and condense-plus-context engines) or the
newest user turn read from memory (simple engine).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, cast

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import (
    CondensePlusContextChatEngine,
    ContextChatEngine,
    SimpleChatEngine,
)
from llama_index.core.chat_engine.types import (
    AgentChatResponse,
    BaseChatEngine,
    StreamingAgentChatResponse,
)
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.memory import BaseMemory
from llama_index.core.schema import QueryBundle

from bpo_integrations._faces import as_optimizer
from bpo_integrations.llama_index.query_transform import tell_callback_manager
from bpo_integrations.result import OptimizationResult
from bpo_integrations.settings import GenerationSettings, Mode

dispatcher = get_dispatcher(__name__)

METADATA_KEY = "bpo"
"""The key of the optimization record in ``AgentChatResponse.metadata``."""

_TURN: ContextVar[OptimizationResult | None] = ContextVar("bpo_chat_turn", default=None)


class BPOChatMessageOptimizedEvent(BaseEvent):
    """Instrumentation event sent once per user message: the message and its optimization."""

    message: str
    result: OptimizationResult

    @classmethod
    def class_name(cls) -> str:
        return "BPOChatMessageOptimizedEvent"


class BPOChatEngine(BaseChatEngine):
    """Optimizes each user message of a chat engine; retrieval and memory keep the original.

    Wraps a ``ContextChatEngine``, ``CondensePlusContextChatEngine`` or ``SimpleChatEngine``
    (``index.as_chat_engine(chat_mode="context" | "condense_plus_context" | "simple")``). Per
    message: BPO rewrites it; the engine retrieves with (and condenses) the original; the LLM is
    asked the rewrite, after the conversation as the user wrote it; memory stores the original.
    ``response.metadata["bpo"]`` (non-streaming calls) holds the record; each optimization is a
    :class:`BPOChatMessageOptimizedEvent` for instrumentation and a ``QUERY`` event for the
    engine's legacy ``CallbackManager``. When the optimizer falls back, the LLM sees the message
    as written. For a ``CondenseQuestionChatEngine``, give it a
    :class:`~bpo_integrations.llama_index.BPOTransformQueryEngine` as its query engine instead.

    Args:
        chat_engine: the engine to wrap (changed in place to hand the LLM the rewrite; use it
            through this wrapper from then on).
        optimizer: a :class:`BPOOptimizer`, a backend, an LLM (:meth:`BPOOptimizer.from_llm`),
            or nothing: the embedded default model.
        mode: decoding mode per message; ``None``: the optimizer's.
        iterations: rounds of re-optimization per message; ``None``: the optimizer's.

    Example:
        >>> from llama_index.core import Document, VectorStoreIndex
        >>> from llama_index.core.embeddings import MockEmbedding
        >>> from llama_index.core.llms import MockLLM
        >>> from bpo_integrations.backends import CallableBackend
        >>> index = VectorStoreIndex.from_documents(
        ...     [Document(text="Cats purr when content.")], embed_model=MockEmbedding(embed_dim=8)
        ... )
        >>> engine = BPOChatEngine(
        ...     index.as_chat_engine(chat_mode="context", llm=MockLLM()),
        ...     CallableBackend(lambda p: p + " Explain the mechanism."),
        ... )
        >>> response = engine.chat("Why do cats purr?")  # MockLLM answers with its own prompt
        >>> "user: Why do cats purr? Explain the mechanism." in response.response
        True
        >>> [m.content for m in engine.chat_history][0]
        'Why do cats purr?'
    """

    def __init__(
        self,
        chat_engine: BaseChatEngine,
        optimizer: Any = None,
        *,
        mode: Mode | None = None,
        iterations: int | None = None,
    ) -> None:
        if isinstance(chat_engine, ContextChatEngine | CondensePlusContextChatEngine):
            _hook_synthesizer(chat_engine)
        elif isinstance(chat_engine, SimpleChatEngine):
            if not isinstance(chat_engine._memory, _RewritingMemory):
                chat_engine._memory = _RewritingMemory(inner=chat_engine._memory)
        else:
            raise TypeError(
                f"BPOChatEngine wraps a ContextChatEngine, CondensePlusContextChatEngine or "
                f"SimpleChatEngine, got {type(chat_engine).__name__}; for a "
                "CondenseQuestionChatEngine pass query_engine=BPOTransformQueryEngine(...)"
            )
        if mode is not None:
            GenerationSettings.for_mode(mode)
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.chat_engine = chat_engine
        self.optimizer = as_optimizer(optimizer, "BPOChatEngine")
        self.mode: Mode | None = mode
        self.iterations = iterations

    def __repr__(self) -> str:
        return f"BPOChatEngine({type(self.chat_engine).__name__}, optimizer={self.optimizer!r})"

    # -- BaseChatEngine -----------------------------------------------------------------------

    def chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AgentChatResponse:
        result = self._record(self.optimizer.optimize(message, **self._options()))
        token = _TURN.set(result)
        try:
            response = self.chat_engine.chat(message, chat_history, **kwargs)
        finally:
            _TURN.reset(token)
        return _with_metadata(response, result)

    def stream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> StreamingAgentChatResponse:
        result = self._record(self.optimizer.optimize(message, **self._options()))
        token = _TURN.set(result)
        try:
            streamed = self.chat_engine.stream_chat(message, chat_history, **kwargs)
            return cast(StreamingAgentChatResponse, streamed)
        finally:
            _TURN.reset(token)

    async def achat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> AgentChatResponse:
        result = self._record(await self.optimizer.aoptimize(message, **self._options()))
        token = _TURN.set(result)
        try:
            response = await self.chat_engine.achat(message, chat_history, **kwargs)
        finally:
            _TURN.reset(token)
        return _with_metadata(response, result)

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None, **kwargs: Any
    ) -> StreamingAgentChatResponse:
        result = self._record(await self.optimizer.aoptimize(message, **self._options()))
        token = _TURN.set(result)
        try:
            streamed = await self.chat_engine.astream_chat(message, chat_history, **kwargs)
            return cast(StreamingAgentChatResponse, streamed)
        finally:
            _TURN.reset(token)

    def reset(self) -> None:
        self.chat_engine.reset()

    @property
    def chat_history(self) -> list[ChatMessage]:
        """The conversation as the user wrote it."""
        return self.chat_engine.chat_history

    # -- helpers ------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"mode": self.mode, "iterations": self.iterations}

    def _record(self, result: OptimizationResult) -> OptimizationResult:
        dispatcher.event(BPOChatMessageOptimizedEvent(message=result.original, result=result))
        tell_callback_manager(getattr(self.chat_engine, "callback_manager", None), result)
        return result


def _with_metadata(response: AgentChatResponse, result: OptimizationResult) -> AgentChatResponse:
    response.metadata = {**(response.metadata or {}), METADATA_KEY: result.to_dict()}
    return response


def _rewrite_of(text: Any) -> str | None:
    """The rewrite to show the LLM in place of ``text``, when ``text`` is this turn's message."""
    result = _TURN.get()
    if result is None or result.fell_back or text != result.original:
        return None
    return result.text


# -- context and condense-plus-context engines: the synthesizer's query -----------------------


class _RewritingSynthesizer:
    """The engine's response synthesizer, asked the rewrite instead of the user's message."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def synthesize(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return self._inner.synthesize(_swap_query(query), *args, **kwargs)

    async def asynthesize(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.asynthesize(_swap_query(query), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SynthesizerHook:
    """Stands in for the engine's ``_get_response_synthesizer`` (the step every context engine
    takes to build the LLM call)."""

    def __init__(self, build: Any) -> None:
        self.build = build

    def __call__(self, *args: Any, **kwargs: Any) -> _RewritingSynthesizer:
        return _RewritingSynthesizer(self.build(*args, **kwargs))


def _hook_synthesizer(engine: BaseChatEngine) -> None:
    if not isinstance(vars(engine).get("_get_response_synthesizer"), _SynthesizerHook):
        engine._get_response_synthesizer = _SynthesizerHook(engine._get_response_synthesizer)  # type: ignore[attr-defined]


def _swap_query(query: Any) -> Any:
    if isinstance(query, QueryBundle):
        rewrite = _rewrite_of(query.query_str)
        if rewrite is None:
            return query
        return QueryBundle(
            query_str=rewrite,
            image_path=query.image_path,
            custom_embedding_strs=query.custom_embedding_strs,
            embedding=query.embedding,
        )
    rewrite = _rewrite_of(query)
    return query if rewrite is None else rewrite


# -- simple engine: the newest user turn read from memory -------------------------------------


class _RewritingMemory(BaseMemory):
    """The engine's memory, which stores what it is given and shows the LLM this turn's rewrite."""

    inner: BaseMemory

    @classmethod
    def class_name(cls) -> str:
        return "BPORewritingMemory"

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> _RewritingMemory:
        raise NotImplementedError("BPOChatEngine wraps the engine's own memory")

    @property
    def tokenizer_fn(self) -> Any:
        return self.inner.tokenizer_fn  # type: ignore[attr-defined]

    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        return _show_rewrite(self.inner.get(input=input, **kwargs))

    async def aget(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        return _show_rewrite(await self.inner.aget(input=input, **kwargs))

    def get_all(self) -> list[ChatMessage]:
        return self.inner.get_all()

    async def aget_all(self) -> list[ChatMessage]:
        return await self.inner.aget_all()

    def put(self, message: ChatMessage) -> None:
        self.inner.put(message)

    async def aput(self, message: ChatMessage) -> None:
        await self.inner.aput(message)

    def put_messages(self, messages: list[ChatMessage]) -> None:
        self.inner.put_messages(messages)

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        await self.inner.aput_messages(messages)

    def set(self, messages: list[ChatMessage]) -> None:
        self.inner.set(messages)

    async def aset(self, messages: list[ChatMessage]) -> None:
        await self.inner.aset(messages)

    def reset(self) -> None:
        self.inner.reset()

    async def areset(self) -> None:
        await self.inner.areset()


def _show_rewrite(messages: list[ChatMessage]) -> list[ChatMessage]:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role != MessageRole.USER:
            continue
        rewrite = _rewrite_of(message.content)
        if rewrite is None:
            return messages
        shown = ChatMessage(
            role=message.role, content=rewrite, additional_kwargs=message.additional_kwargs
        )
        return [*messages[:index], shown, *messages[index + 1 :]]
    return messages
