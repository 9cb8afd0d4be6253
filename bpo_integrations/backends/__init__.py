"""Where the optimizer model runs: TGI, an OpenAI-compatible server, in-process, or an LLM you have.

Each backend imports its client library only when it is used. :func:`from_llm` (and
:func:`from_langchain`, :func:`from_llama_index`) wrap a LangChain or LlamaIndex model you
already have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpo_integrations._lazy import lazy_getattr
from bpo_integrations.backends.base import Backend
from bpo_integrations.backends.callable import CallableBackend
from bpo_integrations.backends.factory import (
    BackendConfigError,
    BackendKind,
    MissingExtraError,
    create,
)

if TYPE_CHECKING:
    from bpo_integrations.backends.langchain import LangChainBackend, from_langchain
    from bpo_integrations.backends.llama_index import LlamaIndexBackend, from_llama_index
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.backends.openai import OpenAIBackend, OpenAIPromptEngineerBackend
    from bpo_integrations.backends.tgi import TGIBackend

_LAZY = {
    "TGIBackend": "bpo_integrations.backends.tgi",
    "OpenAIBackend": "bpo_integrations.backends.openai",
    "OpenAIPromptEngineerBackend": "bpo_integrations.backends.openai",
    "LocalBackend": "bpo_integrations.backends.local",
    "LangChainBackend": "bpo_integrations.backends.langchain",
    "from_langchain": "bpo_integrations.backends.langchain",
    "LlamaIndexBackend": "bpo_integrations.backends.llama_index",
    "from_llama_index": "bpo_integrations.backends.llama_index",
}

__all__ = [
    "Backend",
    "BackendConfigError",
    "BackendKind",
    "CallableBackend",
    "LangChainBackend",
    "LlamaIndexBackend",
    "LocalBackend",
    "MissingExtraError",
    "OpenAIBackend",
    "OpenAIPromptEngineerBackend",
    "TGIBackend",
    "create",
    "from_langchain",
    "from_llama_index",
    "from_llm",
    "is_llm",
]


def _framework(value: object) -> str | None:
    """``"langchain"`` or ``"llama_index"`` when ``value``'s class comes from that framework.

    Read from the class's own modules, so that neither framework is imported to find out.
    """
    for cls in type(value).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "langchain_core":
            return "langchain"
        if root == "llama_index":
            return "llama_index"
    return None


def is_llm(value: object) -> bool:
    """Whether ``value`` is a LangChain or LlamaIndex object that :func:`from_llm` may take."""
    return _framework(value) is not None


def from_llm(llm: Any, *, prompt_template: str | None = None, max_concurrency: int = 8) -> Backend:
    """A backend over a LangChain chat/completion model or a LlamaIndex LLM, found by its type.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> from_llm(MockLLM())
        LlamaIndexBackend(MockLLM, chat=False)
    """
    framework = _framework(llm)
    if framework == "langchain":
        from bpo_integrations.backends.langchain import LangChainBackend

        return LangChainBackend(
            llm, prompt_template=prompt_template, max_concurrency=max_concurrency
        )
    if framework == "llama_index":
        from bpo_integrations.backends.llama_index import LlamaIndexBackend

        return LlamaIndexBackend(
            llm, prompt_template=prompt_template, max_concurrency=max_concurrency
        )
    raise TypeError(
        f"from_llm takes a LangChain chat model or LLM, or a LlamaIndex LLM, got "
        f"{type(llm).__name__}; for a function use CallableBackend(fn)"
    )


__getattr__ = lazy_getattr(__name__, _LAZY)
