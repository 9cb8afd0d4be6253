"""The one constructor rule of the framework faces: what may stand where an optimizer goes."""

from __future__ import annotations

from bpo_integrations.backends.base import Backend
from bpo_integrations.optimizer import BPOOptimizer


def as_optimizer(value: object, owner: str = "optimizer") -> BPOOptimizer:
    """The one constructor rule of ``BPORunnable``, ``BPOMiddleware`` and ``BPOQueryTransform``.

    ``value`` is an optimizer (used as it is), a :class:`Backend` (wrapped with default
    settings), a LangChain or LlamaIndex LLM (:meth:`BPOOptimizer.from_llm`), or ``None``: the
    embedded default model (``BPOOptimizer()``).
    """
    if isinstance(value, BPOOptimizer):
        return value
    if value is None:
        return BPOOptimizer()
    if isinstance(value, Backend):
        return BPOOptimizer(value)
    from bpo_integrations.backends import is_llm

    if is_llm(value):
        return BPOOptimizer.from_llm(value)
    raise TypeError(
        f"{owner} takes a BPOOptimizer, a Backend, a LangChain or LlamaIndex LLM, or nothing "
        f"(the embedded default model), got {type(value).__name__}; use "
        "BPOOptimizer(TGIBackend(url)) for a BPO server, BPOOptimizer(CallableBackend(fn)) for "
        "a rewrite function"
    )
