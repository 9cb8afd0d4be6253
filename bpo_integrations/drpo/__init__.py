"""DRPO (Dynamic Rewarding with Prompt Optimization; Singla et al., EMNLP 2024) in use.

``bpo-train drpo`` searches, once per base model, a system prompt and optimized in-context
examples and writes them as one JSON artifact (``"format": "drpo-alignment/1"``). This package
loads it and builds what goes in front of each request: the system prompt and the K examples
most similar to the user's message. It imports no torch, LangChain or LlamaIndex; the
integrations are ``bpo_integrations.langchain.DRPORunnable`` and
``bpo_integrations.llama_index.DRPOChatEngine``.

Example:
    >>> from bpo_integrations.drpo import DRPOAligner
    >>> aligner = DRPOAligner({"format": "drpo-alignment/1", "system_prompt": "Be kind.",
    ...                        "examples": [{"query": "Hi?", "response": "Hello!"}]})
    >>> [m["role"] for m in aligner.messages("Hello?")]
    ['system', 'user', 'assistant', 'user']
"""

from __future__ import annotations

from bpo_integrations.drpo.aligner import (
    Alignment,
    DRPOAligner,
    alignment_messages,
    alignment_prefix,
)
from bpo_integrations.drpo.artifact import (
    ARTIFACT_SCHEMA,
    FORMAT,
    AlignmentArtifact,
    ArtifactError,
    ICLExample,
    load_artifact,
    write_artifact,
)
from bpo_integrations.drpo.retrieval import (
    BM25Retriever,
    EmbeddingRetriever,
    Retriever,
    make_retriever,
)

__all__ = [
    "ARTIFACT_SCHEMA",
    "FORMAT",
    "Alignment",
    "AlignmentArtifact",
    "ArtifactError",
    "BM25Retriever",
    "DRPOAligner",
    "EmbeddingRetriever",
    "ICLExample",
    "Retriever",
    "alignment_messages",
    "alignment_prefix",
    "load_artifact",
    "make_retriever",
    "write_artifact",
]
