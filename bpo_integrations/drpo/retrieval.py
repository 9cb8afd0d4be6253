"""Which in-context examples suit a query: BM25 by default, or any embedding model.

DRPO retrieves the K examples whose *queries* are most similar to the user's query (the paper
embeds them with a sentence encoder). :class:`BM25Retriever` needs nothing beyond the standard
library; :class:`EmbeddingRetriever` takes a LangChain ``Embeddings`` or a LlamaIndex
``BaseEmbedding`` (recognised by their methods, so neither library is imported here).

Results are ``(index, score)`` pairs, best first; equal scores keep the examples' order, and a
query that shares nothing with any example still gets the first K (DRPO always shows K).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, runtime_checkable

_TOKEN = re.compile(r"\w+", re.UNICODE)

_STOPWORDS = """
a about above after again all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
"""

ENGLISH_STOPWORDS = frozenset(_STOPWORDS.split())
"""Function words left out of BM25 by default (as Lucene's English analyzer does): with a
dozen examples, "why", "the" and "is" would otherwise outweigh the one topical word shared."""


def tokenize(text: str, stopwords: frozenset[str] = frozenset()) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore; any script), minus ``stopwords``."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in stopwords]


@runtime_checkable
class Retriever(Protocol):
    """Ranks a fixed list of documents against a query."""

    def top_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        """The ``k`` best ``(index, score)`` pairs, best first, skipping ``exclude``."""
        ...

    async def atop_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        """Async twin of :meth:`top_k`."""
        ...


def _best(scores: Sequence[float], k: int, exclude: Collection[int]) -> list[tuple[int, float]]:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ranked = sorted(
        ((i, s) for i, s in enumerate(scores) if i not in exclude), key=lambda p: (-p[1], p[0])
    )
    return ranked[:k]


class BM25Retriever:
    """Okapi BM25 over the documents, in pure Python.

    IDF is ``log(1 + (N - n + 0.5) / (n + 0.5))`` (Lucene's), which stays positive even for words
    found in most documents: with a dozen examples the classic formula would score a common
    word below zero. English function words are left out (``stopwords=()`` keeps them).

    Example:
        >>> retriever = BM25Retriever(["How do I bake bread?", "Explain black holes."])
        >>> retriever.top_k("Why are black holes black?", 1)[0][0]
        1
    """

    name = "bm25"

    def __init__(
        self,
        documents: Sequence[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: Collection[str] = ENGLISH_STOPWORDS,
    ) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.documents = list(documents)
        self.k1 = k1
        self.b = b
        self.stopwords = frozenset(stopwords)
        self._counts = [Counter(tokenize(doc, self.stopwords)) for doc in self.documents]
        self._lengths = [sum(c.values()) for c in self._counts]
        n = len(self.documents)
        self._avg_length = (sum(self._lengths) / n) if n else 0.0
        frequency: Counter[str] = Counter()
        for counts in self._counts:
            frequency.update(counts.keys())
        self._idf = {
            term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()
        }

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for ``query``."""
        terms = tokenize(query, self.stopwords)
        out = []
        for counts, length in zip(self._counts, self._lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / (self._avg_length or 1.0))
            score = 0.0
            for term in terms:
                tf = counts.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (self.k1 + 1) / (tf + norm)
            out.append(score)
        return out

    def top_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        return _best(self.scores(query), k, exclude)

    async def atop_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        return self.top_k(query, k, exclude=exclude)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity (0 when either vector is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


_EMBEDDING_METHODS = (
    ("embed_documents", "embed_query", "aembed_query", "aembed_documents"),  # LangChain
    (  # LlamaIndex
        "get_text_embedding_batch",
        "get_query_embedding",
        "aget_query_embedding",
        "aget_text_embedding_batch",
    ),
)
"""Each framework's embedding methods: documents, query, and their async twins."""


class EmbeddingRetriever:
    """Cosine similarity of embeddings; the documents are embedded once, on first use.

    Build it with :meth:`from_embeddings` (a LangChain ``Embeddings`` or a LlamaIndex
    ``BaseEmbedding``) or from two functions.

    Example:
        >>> from langchain_core.embeddings import DeterministicFakeEmbedding
        >>> docs = ["How do I bake bread?", "Explain black holes."]
        >>> retriever = EmbeddingRetriever.from_embeddings(DeterministicFakeEmbedding(size=8), docs)
        >>> retriever.top_k("Explain black holes.", 1)[0][0]  # the same text embeds the same
        1
    """

    name = "embeddings"

    def __init__(
        self,
        documents: Sequence[str],
        embed_documents: Callable[[list[str]], Sequence[Sequence[float]]],
        embed_query: Callable[[str], Sequence[float]],
        *,
        aembed_query: Callable[[str], Any] | None = None,
        aembed_documents: Callable[[list[str]], Any] | None = None,
        label: str = "embeddings",
    ) -> None:
        self.documents = list(documents)
        self._embed_documents = embed_documents
        self._embed_query = embed_query
        self._aembed_query = aembed_query
        self._aembed_documents = aembed_documents
        self.label = label
        self._vectors: list[Sequence[float]] | None = None

    @classmethod
    def from_embeddings(cls, embeddings: Any, documents: Sequence[str]) -> EmbeddingRetriever:
        """Wrap a LangChain ``Embeddings`` (``embed_documents``/``embed_query``) or a LlamaIndex
        ``BaseEmbedding`` (``get_text_embedding_batch``/``get_query_embedding``)."""
        for documents_name, query_name, aquery_name, adocuments_name in _EMBEDDING_METHODS:
            if hasattr(embeddings, documents_name) and hasattr(embeddings, query_name):
                return cls(
                    documents,
                    getattr(embeddings, documents_name),
                    getattr(embeddings, query_name),
                    aembed_query=getattr(embeddings, aquery_name, None),
                    aembed_documents=getattr(embeddings, adocuments_name, None),
                    label=type(embeddings).__name__,
                )
        raise TypeError(
            f"embeddings must be a LangChain Embeddings (embed_documents, embed_query) or a "
            f"LlamaIndex BaseEmbedding (get_text_embedding_batch, get_query_embedding), got "
            f"{type(embeddings).__name__}; leave it unset to use BM25"
        )

    def _document_vectors(self) -> list[Sequence[float]]:
        if self._vectors is None:
            vectors = list(self._embed_documents(list(self.documents))) if self.documents else []
            self._check(vectors)
            self._vectors = vectors
        return self._vectors

    async def _adocument_vectors(self) -> list[Sequence[float]]:
        if self._vectors is None:
            if self._aembed_documents is not None and self.documents:
                vectors = list(await self._aembed_documents(list(self.documents)))
            else:
                vectors = await asyncio.to_thread(
                    lambda: (
                        list(self._embed_documents(list(self.documents))) if self.documents else []
                    )
                )
            self._check(vectors)
            self._vectors = vectors
        return self._vectors

    def _check(self, vectors: list[Sequence[float]]) -> None:
        if len(vectors) != len(self.documents):
            raise ValueError(
                f"{self.label} returned {len(vectors)} embeddings for {len(self.documents)} "
                "examples"
            )

    def top_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        vectors = self._document_vectors()
        if not vectors:
            return []
        query_vector = self._embed_query(query)
        return _best([cosine(query_vector, v) for v in vectors], k, exclude)

    async def atop_k(
        self, query: str, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        vectors = await self._adocument_vectors()
        if not vectors:
            return []
        if self._aembed_query is not None:
            query_vector = await self._aembed_query(query)
        else:
            query_vector = await asyncio.to_thread(self._embed_query, query)
        return _best([cosine(query_vector, v) for v in vectors], k, exclude)


def make_retriever(documents: Sequence[str], embeddings: Any = None) -> Retriever:
    """BM25 over ``documents``, or cosine similarity with ``embeddings`` when given (a LangChain
    ``Embeddings``, a LlamaIndex ``BaseEmbedding``, or a ready :class:`Retriever`)."""
    if embeddings is None:
        return BM25Retriever(documents)
    if isinstance(embeddings, BM25Retriever | EmbeddingRetriever):
        if list(embeddings.documents) != list(documents):
            raise ValueError(
                "the retriever given was built over other documents than the artifact's example "
                "queries; pass the embedding model instead and it is built for you"
            )
        return embeddings
    return EmbeddingRetriever.from_embeddings(embeddings, documents)
