"""Black-Box Prompt Optimization (BPO) in front of any LLM application.

Importing this package is light: it imports no torch, LangChain or LlamaIndex. The integrations
live in ``bpo_integrations.langchain`` and ``bpo_integrations.llama_index`` (optional extras).
"""

from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    BPOError,
    GuardError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.guards import GuardFailure, Guards
from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.result import FallbackReason, OptimizationResult
from bpo_integrations.settings import FinishReason, Generation, GenerationSettings
from bpo_integrations.template import BPO_INSTRUCTION, BPO_TEMPLATE, format_bpo_prompt

__version__ = "0.1.0"

__all__ = [
    "BPO_INSTRUCTION",
    "BPO_TEMPLATE",
    "BPOError",
    "BPOOptimizer",
    "BackendError",
    "BackendUnavailableError",
    "FallbackReason",
    "FinishReason",
    "Generation",
    "GenerationSettings",
    "GuardError",
    "GuardFailure",
    "Guards",
    "OptimizationResult",
    "OptimizationTimeoutError",
    "TransientBackendError",
    "__version__",
    "format_bpo_prompt",
]
