"""BPO for LlamaIndex: a query transform and an async-capable transform query engine.

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

from bpo_integrations.llama_index.drpo import DRPOAlignmentEvent, DRPOChatEngine, DRPOChatMessages
from bpo_integrations.llama_index.query_engine import METADATA_KEY, BPOTransformQueryEngine
from bpo_integrations.llama_index.query_transform import (
    BPOQueryBundle,
    BPOQueryOptimizedEvent,
    BPOQueryTransform,
    EmbedMode,
)

__all__ = [
    "METADATA_KEY",
    "BPOQueryBundle",
    "BPOQueryOptimizedEvent",
    "BPOQueryTransform",
    "BPOTransformQueryEngine",
    "DRPOAlignmentEvent",
    "DRPOChatEngine",
    "DRPOChatMessages",
    "EmbedMode",
]
