"""BPO for LlamaIndex: a query transform, an async-capable transform query engine, a chat engine.

Needs ``llama-index-core`` (``pip install 'bpo-integrations[llamaindex]'``); imports no LangChain.
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "bpo_integrations.llama_index needs llama-index-core: "
        "pip install 'bpo-integrations[llamaindex]'"
    ) from error

from bpo_integrations.llama_index.chat_engine import BPOChatEngine, BPOChatMessageOptimizedEvent
from bpo_integrations.llama_index.drpo import DRPOAlignmentEvent, DRPOChatEngine, DRPOChatMessages
from bpo_integrations.llama_index.query_engine import METADATA_KEY, BPOTransformQueryEngine
from bpo_integrations.llama_index.query_transform import (
    PROMPT_KEY,
    BPOQueryBundle,
    BPOQueryOptimizedEvent,
    BPOQueryTransform,
    EmbedMode,
)

__all__ = [
    "METADATA_KEY",
    "PROMPT_KEY",
    "BPOChatEngine",
    "BPOChatMessageOptimizedEvent",
    "BPOQueryBundle",
    "BPOQueryOptimizedEvent",
    "BPOQueryTransform",
    "BPOTransformQueryEngine",
    "DRPOAlignmentEvent",
    "DRPOChatEngine",
    "DRPOChatMessages",
    "EmbedMode",
]
