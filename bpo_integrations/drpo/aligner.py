"""What DRPO puts in front of a query: the system prompt, then K example turns, then the user.

The layout is the same during the search (``bpo-train drpo`` asks the base model this way) and in
use (the LangChain and LlamaIndex integrations build it with :class:`DRPOAligner`)::

    system:     <searched system prompt>
    user:       <example 1 query>        (the most similar example first)
    assistant:  <example 1 response>
    ...                                  (K examples)
    user:       <the user's query>
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bpo_integrations.drpo.artifact import AlignmentArtifact, ICLExample, load_artifact
from bpo_integrations.drpo.retrieval import Retriever, make_retriever

Message = dict[str, str]


def alignment_prefix(
    system_prompt: str | None, examples: Sequence[ICLExample | tuple[str, str]]
) -> list[Message]:
    """The system message (when ``system_prompt`` is not empty) and the example turns.

    Example:
        >>> [m["role"] for m in alignment_prefix("Be kind.", [("Hi?", "Hello!")])]
        ['system', 'user', 'assistant']
    """
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for example in examples:
        query, response = (
            (example.query, example.response) if isinstance(example, ICLExample) else example
        )
        messages.append({"role": "user", "content": query})
        messages.append({"role": "assistant", "content": response})
    return messages


def alignment_messages(
    system_prompt: str | None, examples: Sequence[ICLExample | tuple[str, str]], query: str
) -> list[Message]:
    """:func:`alignment_prefix` followed by the user's ``query``."""
    return [*alignment_prefix(system_prompt, examples), {"role": "user", "content": query}]


@dataclass(frozen=True)
class Alignment:
    """The alignment chosen for one query: the system prompt (``None`` when off) and the
    examples, with their index in the artifact and their similarity to the query."""

    system_prompt: str | None
    examples: tuple[ICLExample, ...]
    indices: tuple[int, ...]
    similarities: tuple[float, ...]

    def prefix(self) -> list[Message]:
        """The messages to put before the user's turn."""
        return alignment_prefix(self.system_prompt, self.examples)

    def messages(self, query: str) -> list[Message]:
        """The whole request: :meth:`prefix` and the user's ``query``."""
        return alignment_messages(self.system_prompt, self.examples, query)

    def to_dict(self) -> dict[str, Any]:
        """A record for tracing: which examples were picked, and how similar they were."""
        return {
            "system_prompt": self.system_prompt,
            "example_indices": list(self.indices),
            "example_queries": [example.query for example in self.examples],
            "similarities": [round(s, 6) for s in self.similarities],
        }


class DRPOAligner:
    """Loads an alignment artifact and picks, for each query, the K most similar examples.

    Args:
        artifact: the artifact, its path, or its parsed dict.
        k: examples per query (default: the ``k`` the search used, from the artifact); 0 shows
            none.
        embeddings: a LangChain ``Embeddings`` or LlamaIndex ``BaseEmbedding`` to rank examples
            by cosine similarity; default: BM25 on the example queries.
        use_system_prompt: ``False`` leaves the system prompt out (examples only).

    Example:
        >>> aligner = DRPOAligner({
        ...     "format": "drpo-alignment/1", "system_prompt": "Be precise.", "k": 1,
        ...     "examples": [{"query": "Bake bread?", "response": "Knead, prove, bake."},
        ...                  {"query": "What is a black hole?", "response": "Collapsed star."}],
        ... })
        >>> [m["content"] for m in aligner.messages("Can a black hole die?")]
        ['Be precise.', 'What is a black hole?', 'Collapsed star.', 'Can a black hole die?']
    """

    def __init__(
        self,
        artifact: AlignmentArtifact | Mapping[str, Any] | str | os.PathLike[str],
        *,
        k: int | None = None,
        embeddings: Any = None,
        use_system_prompt: bool = True,
    ) -> None:
        self.artifact = load_artifact(artifact)
        resolved = self.artifact.k if k is None else k
        if isinstance(resolved, bool) or not isinstance(resolved, int) or resolved < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        self.k = resolved
        self.use_system_prompt = use_system_prompt
        self.retriever: Retriever = make_retriever(
            [example.query for example in self.artifact.examples], embeddings
        )

    @property
    def system_prompt(self) -> str | None:
        """The system prompt that is sent (``None`` when off or empty)."""
        if not self.use_system_prompt:
            return None
        return self.artifact.system_prompt or None

    def select(self, query: str, *, exclude: Collection[int] = ()) -> Alignment:
        """The system prompt and the K examples most similar to ``query``."""
        _check_query(query)
        ranked = self.retriever.top_k(query, self.k, exclude=exclude) if self.k else []
        return self._alignment(ranked)

    async def aselect(self, query: str, *, exclude: Collection[int] = ()) -> Alignment:
        """Async twin of :meth:`select` (awaits an async embedding model)."""
        _check_query(query)
        ranked = await self.retriever.atop_k(query, self.k, exclude=exclude) if self.k else []
        return self._alignment(ranked)

    def messages(self, query: str) -> list[Message]:
        """The whole request for ``query`` as OpenAI-style role/content dicts."""
        return self.select(query).messages(query)

    def _alignment(self, ranked: Sequence[tuple[int, float]]) -> Alignment:
        examples = self.artifact.examples
        return Alignment(
            system_prompt=self.system_prompt,
            examples=tuple(examples[i] for i, _ in ranked),
            indices=tuple(i for i, _ in ranked),
            similarities=tuple(float(s) for _, s in ranked),
        )

    def __repr__(self) -> str:
        return (
            f"DRPOAligner(examples={len(self.artifact.examples)}, k={self.k}, "
            f"retriever={getattr(self.retriever, 'name', type(self.retriever).__name__)})"
        )


def _check_query(query: Any) -> None:
    if not isinstance(query, str):
        raise TypeError(f"the query must be a str, got {type(query).__name__}")
