"""BPO for LangChain: an LCEL Runnable and an agent middleware.

``BPORunnable`` needs only ``langchain-core`` (extra ``langchain``); ``BPOMiddleware`` needs
``langchain>=1`` (extra ``agents``) and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as error:
    raise ImportError(
        "bpo_integrations.langchain needs langchain-core: pip install 'bpo-integrations[langchain]'"
    ) from error

from bpo_integrations.langchain.drpo import ALIGNMENT_EVENT, DRPOInput, DRPORunnable, RunnableDRPO
from bpo_integrations.langchain.runnable import (
    OPTIMIZATION_EVENT,
    OPTIMIZATION_RUN_NAME,
    BPOInput,
    BPORunnable,
    FilledPromptWarning,
    RunnableBPO,
)

if TYPE_CHECKING:
    from bpo_integrations.langchain.middleware import BPOMiddleware, BPOState

__all__ = [
    "ALIGNMENT_EVENT",
    "OPTIMIZATION_EVENT",
    "OPTIMIZATION_RUN_NAME",
    "BPOInput",
    "BPOMiddleware",
    "BPORunnable",
    "BPOState",
    "DRPOInput",
    "DRPORunnable",
    "FilledPromptWarning",
    "RunnableBPO",
    "RunnableDRPO",
]


def __getattr__(name: str) -> Any:
    if name in ("BPOMiddleware", "BPOState"):
        try:
            from bpo_integrations.langchain import middleware
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] != "langchain":
                raise
            raise ImportError(
                f"{name} needs the langchain package (>=1.0): "
                "pip install 'bpo-integrations[agents]'"
            ) from error
        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
