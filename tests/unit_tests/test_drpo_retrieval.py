"""Retrieval of in-context examples: BM25 by default, LangChain or LlamaIndex embeddings when given."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

from bpo_integrations.drpo import BM25Retriever, DRPOAligner, EmbeddingRetriever, make_retriever
from bpo_integrations.drpo.retrieval import tokenize
from bpo_integrations.template import join_context

QUERIES = [
    "How do I keep a basil plant alive indoors?",
    "What causes ocean tides on Earth?",
    "Write a Python function that reverses a string.",
    "How can I stop my dog from barking at night?",
]
VOCAB = ["basil", "plant", "tides", "ocean", "python", "string", "dog", "barking"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("my basil keeps dying, what should I do for the plant?", 0),
        ("why are there two tides a day", 1),
        ("reverse a string in python please", 2),
        ("the neighbour's dog is barking all night", 3),
    ],
)
def test_bm25_ranks_the_example_on_the_same_topic_first(query: str, expected: int) -> None:
    ranked = BM25Retriever(QUERIES).top_k(query, 2)
    assert ranked[0][0] == expected and ranked[0][1] > ranked[1][1]


def test_bm25_scores_follow_the_okapi_formula() -> None:
    docs = ["cat sat", "cat cat dog", "bird"]
    retriever = BM25Retriever(docs, k1=1.2, b=0.75)
    avg = (2 + 3 + 1) / 3

    def term(tf: int, df: int, length: int) -> float:
        idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * length / avg))

    scores = retriever.scores("cat dog")
    assert scores == pytest.approx([term(1, 2, 2), term(2, 2, 3) + term(1, 1, 3), 0.0])
    assert tokenize("Ünïcode, WORDS_and 42!") == ["ünïcode", "words_and", "42"]


def test_ranking_edges_exclude_ties_and_sizes() -> None:
    retriever = BM25Retriever(QUERIES)
    assert retriever.top_k("basil plant", 2, exclude={0})[0][0] != 0
    assert [i for i, _ in retriever.top_k("nothing in common xyz", 3)] == [0, 1, 2]  # order kept
    assert len(retriever.top_k("basil", 10)) == 4 and retriever.top_k("basil", 0) == []
    assert BM25Retriever([]).top_k("anything", 2) == []
    assert asyncio.run(retriever.atop_k("ocean tides", 1))[0][0] == 1
    with pytest.raises(ValueError, match="k must be >= 0"):
        retriever.top_k("basil", -1)
    with pytest.raises(ValueError, match="BM25 needs"):
        BM25Retriever(QUERIES, b=2)


def _keyword_vector(text: str) -> list[float]:
    words = re.findall(r"[a-z]+", text.lower())
    return [float(words.count(w)) for w in VOCAB] + [0.1]


def test_a_langchain_embeddings_ranks_by_cosine_and_embeds_examples_once() -> None:
    from langchain_core.embeddings import Embeddings

    class KeywordEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.document_calls = 0
            self.async_queries: list[str] = []

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.document_calls += 1
            return [_keyword_vector(t) for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return _keyword_vector(text)

        async def aembed_query(self, text: str) -> list[float]:
            self.async_queries.append(text)
            return _keyword_vector(text)

    embeddings = KeywordEmbeddings()
    retriever = make_retriever(QUERIES, embeddings)
    assert isinstance(retriever, EmbeddingRetriever) and retriever.label == "KeywordEmbeddings"
    assert retriever.top_k("my dog keeps barking", 1)[0][0] == 3
    cosine = (1 + 0.01) / (math.sqrt(2.01) * math.sqrt(1.01))  # "ocean" vs "... ocean tides ..."
    assert retriever.top_k("ocean", 1)[0] == (1, pytest.approx(cosine))
    assert asyncio.run(retriever.atop_k("python string", 1))[0][0] == 2
    assert embeddings.document_calls == 1 and embeddings.async_queries == ["python string"]


def test_a_llama_index_embedding_works_too() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.embeddings import MockEmbedding

    class KeywordEmbedding(MockEmbedding):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(embed_dim=len(VOCAB) + 1, **kwargs)

        def _get_text_embedding(self, text: str) -> list[float]:
            return _keyword_vector(text)

        async def _aget_text_embedding(self, text: str) -> list[float]:
            return _keyword_vector(text)

        def _get_query_embedding(self, query: str) -> list[float]:
            return _keyword_vector(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return _keyword_vector(query)

    retriever = make_retriever(QUERIES, KeywordEmbedding())
    assert retriever.top_k("basil plant care", 1)[0][0] == 0
    assert asyncio.run(retriever.atop_k("tides", 1))[0][0] == 1


def test_wrong_embedding_objects_are_refused() -> None:
    with pytest.raises(TypeError, match=r"LangChain Embeddings .* or a LlamaIndex BaseEmbedding"):
        make_retriever(QUERIES, object())
    with pytest.raises(ValueError, match="built over other documents"):
        make_retriever(QUERIES, BM25Retriever(QUERIES[:2]))
    assert make_retriever(QUERIES, retriever := BM25Retriever(QUERIES)) is retriever

    class Broken:
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return []

        def embed_query(self, text: str) -> list[float]:
            return [1.0]

    with pytest.raises(ValueError, match="returned 0 embeddings for 4 examples"):
        make_retriever(QUERIES, Broken()).top_k("x", 1)


@pytest.mark.shared_data
def test_a_bpo_rewrite_retrieves_the_example_of_its_original(bpo_val_records: list[dict]) -> None:
    """``prompt | bpo | drpo``: retrieval reads the rewrite. Over the 300 real BPO records, with
    the originals as example queries, the rewrite's best match is its own original (94% here;
    the original itself finds its own 299 times, one instruction being duplicated)."""
    originals = [join_context(r["instruction"], r.get("context")).strip() for r in bpo_val_records]
    aligner = DRPOAligner(
        {
            "format": "drpo-alignment/1",
            "system_prompt": "",
            "k": 1,
            "examples": [{"query": q, "response": "-"} for q in originals],
        }
    )
    same = sum(
        aligner.select(r["optimized_prompt"]).examples[0].query == original
        for r, original in zip(bpo_val_records, originals, strict=True)
    )
    assert same / len(originals) >= 0.9
