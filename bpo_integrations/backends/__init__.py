"""Where the optimizer model runs: TGI, an OpenAI-compatible server, or in-process transformers.

Each backend imports its client library only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpo_integrations.backends.base import Backend
from bpo_integrations.backends.callable import CallableBackend

if TYPE_CHECKING:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.backends.openai import OpenAIBackend, OpenAIPromptEngineerBackend
    from bpo_integrations.backends.tgi import TGIBackend

_LAZY = {
    "TGIBackend": "bpo_integrations.backends.tgi",
    "OpenAIBackend": "bpo_integrations.backends.openai",
    "OpenAIPromptEngineerBackend": "bpo_integrations.backends.openai",
    "LocalBackend": "bpo_integrations.backends.local",
}

__all__ = [
    "Backend",
    "CallableBackend",
    "LocalBackend",
    "OpenAIBackend",
    "OpenAIPromptEngineerBackend",
    "TGIBackend",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
