"""What the LlamaIndex tests share: a keyword embedder, three documents indexed with it, an LLM
that keeps its prompts, and an instrumentation handler that keeps the events (import after ``importorskip("llama_index.core")``).
"""

from __future__ import annotations

import re
from typing import Any

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.llms import MockLLM
from pydantic import Field, PrivateAttr

VOCAB = ["cats", "purr", "dogs", "bark", "python", "programming"]
DOCS = {
    "cat": "Cats purr when they are content, and sometimes when they are hurt.",
    "dog": "Dogs bark to warn their owners and to greet them.",
    "python": "Python is a programming language; python programming is popular.",
}
# What a rewrite adds is advice to the answering model; here its words match the python document,
# so embedding the rewrite visibly pulls retrieval off topic.
ADVICE = " Answer like a python programming expert would explain python code."


class KeywordEmbedding(MockEmbedding):
    """A MockEmbedding whose vectors count vocabulary words, and which records each query text."""

    _queries: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(embed_dim=len(VOCAB) + 1, **kwargs)

    @property
    def queries(self) -> list[str]:
        return self._queries

    @staticmethod
    def _vector_of(text: str) -> list[float]:
        words = re.findall(r"[a-z]+", text.lower())
        return [float(words.count(w)) for w in VOCAB] + [1.0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector_of(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._vector_of(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        self._queries.append(query)
        return self._vector_of(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        self._queries.append(query)
        return self._vector_of(query)


class PromptRecordingLLM(MockLLM):
    """A MockLLM with a list for the prompts it is asked to complete (its subclasses record)."""

    _prompts: list[str] = PrivateAttr(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return self._prompts


class EventCollector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


def build_index(embedder: KeywordEmbedding) -> VectorStoreIndex:
    """:data:`DOCS` indexed with ``embedder``, whose recorded queries are then cleared."""
    documents = [Document(text=text, doc_id=name) for name, text in DOCS.items()]
    built = VectorStoreIndex.from_documents(documents, embed_model=embedder)
    embedder.queries.clear()
    return built
