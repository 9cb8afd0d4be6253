"""DRPO for LlamaIndex: a ``ChatMessage`` builder and a chat engine that applies it every turn.

DRPO changes what surrounds the user's message: a system message and example turns before it.
In LlamaIndex that is the job of a chat engine, which assembles the ``ChatMessage`` list the LLM
receives; a query transform can only rewrite the query string, and a prompt template is fixed
while DRPO picks the examples per message. So:

- :class:`DRPOChatMessages` builds the list (system prompt, K similar examples as user /
  assistant turns, the history, the user's message) for any ``llm.chat(...)`` call;
- :class:`DRPOChatEngine` is a ``SimpleChatEngine`` (memory, streaming, async) whose prefix
  messages are chosen anew for each user message.

With BPO, optimize the message first (``BPOOptimizer.optimize``) and chat with the rewrite, as
``prompt | bpo | drpo | llm`` does in LangChain: BPO sees only the user's prompt, and the LLM
gets exactly the layout the search scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CallbackManager
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.llm import LLM
from llama_index.core.memory import BaseMemory, Memory
from llama_index.core.settings import Settings

from bpo_integrations.drpo import Alignment, AlignmentArtifact, DRPOAligner

dispatcher = get_dispatcher(__name__)

ArtifactLike = AlignmentArtifact | dict[str, Any] | str | os.PathLike[str]


class DRPOAlignmentEvent(BaseEvent):
    """Instrumentation event sent once per aligned message: the query and the alignment chosen
    (system prompt, examples' indices, queries and similarities)."""

    query: str
    alignment: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "DRPOAlignmentEvent"


class DRPOChatMessages:
    """Builds the ``ChatMessage`` list DRPO sends: system prompt, K examples, history, message.

    Args:
        aligner: a :class:`~bpo_integrations.drpo.DRPOAligner` (see :meth:`from_artifact`).
        system_role: the role of the system message (``llm.metadata.system_role``).
        extra_system_prompt: the app's own system prompt, appended after DRPO's.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> builder = DRPOChatMessages.from_artifact({
        ...     "format": "drpo-alignment/1", "system_prompt": "Be precise.", "k": 1,
        ...     "examples": [{"query": "What is rain?", "response": "Water from clouds."},
        ...                  {"query": "Bake bread?", "response": "Knead, prove, bake."}]})
        >>> messages = builder.messages("Why does rain fall?")
        >>> [(m.role.value, m.content) for m in messages]  # doctest: +NORMALIZE_WHITESPACE
        [('system', 'Be precise.'), ('user', 'What is rain?'),
         ('assistant', 'Water from clouds.'), ('user', 'Why does rain fall?')]
        >>> MockLLM().chat(messages).message.content.splitlines()[0]  # MockLLM echoes its input
        'system: Be precise.'
    """

    def __init__(
        self,
        aligner: DRPOAligner,
        *,
        system_role: MessageRole = MessageRole.SYSTEM,
        extra_system_prompt: str | None = None,
    ) -> None:
        if not isinstance(aligner, DRPOAligner):
            raise TypeError(
                f"aligner must be a DRPOAligner, got {type(aligner).__name__}; use "
                "DRPOChatMessages.from_artifact(path)"
            )
        self.aligner = aligner
        self.system_role = system_role
        self.extra_system_prompt = extra_system_prompt

    @classmethod
    def from_artifact(
        cls,
        artifact: ArtifactLike,
        *,
        k: int | None = None,
        embed_model: Any = None,
        use_system_prompt: bool = True,
        system_role: MessageRole = MessageRole.SYSTEM,
        extra_system_prompt: str | None = None,
    ) -> DRPOChatMessages:
        """Load ``artifact``; ``embed_model`` (a LlamaIndex ``BaseEmbedding``) ranks the examples
        instead of BM25; ``k`` overrides the artifact's."""
        aligner = DRPOAligner(
            artifact, k=k, embeddings=embed_model, use_system_prompt=use_system_prompt
        )
        return cls(aligner, system_role=system_role, extra_system_prompt=extra_system_prompt)

    def prefix(self, query: str) -> list[ChatMessage]:
        """The system message and the example turns for ``query``."""
        return self._prefix(query, self.aligner.select(query))

    async def aprefix(self, query: str) -> list[ChatMessage]:
        """Async twin of :meth:`prefix` (awaits an async embedding model)."""
        return self._prefix(query, await self.aligner.aselect(query))

    def messages(self, query: str, history: Sequence[ChatMessage] = ()) -> list[ChatMessage]:
        """The whole request: :meth:`prefix`, the ``history``, and ``query`` as the user's turn."""
        return [
            *self.prefix(query),
            *history,
            ChatMessage(role=MessageRole.USER, content=query),
        ]

    def _prefix(self, query: str, alignment: Alignment) -> list[ChatMessage]:
        dispatcher.event(DRPOAlignmentEvent(query=query, alignment=alignment.to_dict()))
        parts = [p for p in (alignment.system_prompt, self.extra_system_prompt) if p]
        messages = [ChatMessage(role=self.system_role, content="\n\n".join(parts))] if parts else []
        for example in alignment.examples:
            messages.append(ChatMessage(role=MessageRole.USER, content=example.query))
            messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=example.response))
        return messages


class DRPOChatEngine(SimpleChatEngine):
    """A ``SimpleChatEngine`` that puts the DRPO alignment in front of each user message.

    For every ``chat``/``stream_chat``/``achat``/``astream_chat`` call the prefix (system prompt
    and the K examples most similar to the message) is chosen anew; memory holds only the real
    conversation, never the examples. One engine is one conversation: do not run two of its
    calls at the same time (its memory could not tell them apart either).

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> engine = DRPOChatEngine.from_artifact({
        ...     "format": "drpo-alignment/1", "system_prompt": "Be precise.", "k": 1,
        ...     "examples": [{"query": "What is rain?", "response": "Water from clouds."}]},
        ...     llm=MockLLM())
        >>> lines = engine.chat("Why does rain fall?").response.splitlines()  # MockLLM echoes
        >>> lines[:4]  # doctest: +NORMALIZE_WHITESPACE
        ['system: Be precise.', 'user: What is rain?', 'assistant: Water from clouds.',
         'user: Why does rain fall?']
    """

    def __init__(
        self,
        llm: LLM,
        memory: BaseMemory,
        builder: DRPOChatMessages,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(
            llm=llm, memory=memory, prefix_messages=[], callback_manager=callback_manager
        )
        self.builder = builder

    @classmethod
    def from_artifact(
        cls,
        artifact: ArtifactLike,
        *,
        llm: LLM | None = None,
        k: int | None = None,
        embed_model: Any = None,
        use_system_prompt: bool = True,
        system_prompt: str | None = None,
        chat_history: list[ChatMessage] | None = None,
        memory: BaseMemory | None = None,
    ) -> DRPOChatEngine:
        """An engine over ``llm`` (default ``Settings.llm``); ``system_prompt`` is the app's
        own, appended after DRPO's."""
        llm = llm or Settings.llm
        memory = memory or Memory.from_defaults(
            chat_history=chat_history or [], token_limit=llm.metadata.context_window - 256
        )
        builder = DRPOChatMessages.from_artifact(
            artifact,
            k=k,
            embed_model=embed_model,
            use_system_prompt=use_system_prompt,
            system_role=llm.metadata.system_role,
            extra_system_prompt=system_prompt,
        )
        return cls(
            llm=llm, memory=memory, builder=builder, callback_manager=Settings.callback_manager
        )

    def chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AgentChatResponse:
        self._prefix_messages = self.builder.prefix(message)
        return cast(AgentChatResponse, super().chat(message, chat_history))

    def stream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        self._prefix_messages = self.builder.prefix(message)
        return cast(StreamingAgentChatResponse, super().stream_chat(message, chat_history))

    async def achat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AgentChatResponse:
        self._prefix_messages = await self.builder.aprefix(message)
        return cast(AgentChatResponse, await super().achat(message, chat_history))

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        self._prefix_messages = await self.builder.aprefix(message)
        answer = await super().astream_chat(message, chat_history)
        return cast(StreamingAgentChatResponse, answer)
