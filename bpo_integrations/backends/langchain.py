"""A LangChain chat or completion model you already have, as the optimizer (``langchain-core``)."""

from __future__ import annotations

from typing import Any

from bpo_integrations.backends._llm import LLMBackend, finish_reason
from bpo_integrations.settings import Generation, GenerationSettings

try:
    from langchain_core.language_models import BaseChatModel, BaseLLM
    from langchain_core.messages import BaseMessage, HumanMessage
    from langchain_core.runnables import RunnableBinding, RunnableConfig
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "LangChainBackend needs langchain-core: pip install 'bpo-integrations[langchain]'"
    ) from error

RUN_NAME = "bpo_optimizer_llm"
"""The run name of the optimizer's own LLM calls in traces."""

TAGS = ("bpo_optimizer", "nostream")
"""Tags of those calls: ``astream_events(..., exclude_tags=["bpo_optimizer"])`` leaves them out,
and LangGraph's ``stream_mode="messages"`` skips ``nostream`` runs, so the optimizer's tokens never
reach a chat UI that streams the answer."""


class LangChainBackend(LLMBackend):
    """Runs the optimizer on a LangChain model: ``BPOOptimizer(LangChainBackend(llm))``.

    A chat model (``BaseChatModel``) gets one user message, the BPO instruction and the prompt;
    a completion model (``BaseLLM``) the raw BPO template; a model with ``.bind(...)`` or
    ``.with_config(...)`` is read through. Async calls go through ``ainvoke``. The calls are
    child runs named ``bpo_optimizer_llm``, tagged ``bpo_optimizer`` and ``nostream``. The model
    decodes with its own settings; only the settings' ``stop`` sequences are passed on.

    Args:
        llm: the model.
        prompt_template: the model's input, a ``str.format`` template with a ``{prompt}``
            field; the default is the BPO instruction (chat) or the BPO template (completion).
        max_concurrency: concurrent calls for a list of prompts.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from bpo_integrations import BPOOptimizer
        >>> chat = GenericFakeChatModel(messages=iter(["Why is the sky blue? Explain."]))
        >>> BPOOptimizer(LangChainBackend(chat)).optimize("why sky blue").text
        'Why is the sky blue? Explain.'
    """

    def __init__(
        self, llm: Any, *, prompt_template: str | None = None, max_concurrency: int = 8
    ) -> None:
        model = llm
        while isinstance(model, RunnableBinding):
            model = model.bound
        if isinstance(model, BaseChatModel):
            chat = True
        elif isinstance(model, BaseLLM):
            chat = False
        else:
            raise TypeError(
                f"LangChainBackend takes a LangChain chat model or LLM (BaseChatModel, BaseLLM), "
                f"got {type(llm).__name__}; for a function use CallableBackend(fn)"
            )
        self.llm = llm
        self.model_name = type(model).__name__
        super().__init__(
            chat=chat,
            prompt_template=prompt_template,
            max_concurrency=max_concurrency,
            name="langchain",
        )

    def __repr__(self) -> str:
        return f"LangChainBackend({self.model_name}, chat={self.chat})"

    @property
    def where(self) -> str:
        return f"the LangChain model {self.model_name}"

    def _input(self, text: str) -> Any:
        return [HumanMessage(content=text)] if self.chat else text

    def _kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        return {"stop": list(settings.stop)} if settings.stop else {}

    def _call(self, text: str, settings: GenerationSettings) -> Generation:
        output = self.llm.invoke(self._input(text), _config(), **self._kwargs(settings))
        return _generation(output)

    async def _acall(self, text: str, settings: GenerationSettings) -> Generation:
        output = await self.llm.ainvoke(self._input(text), _config(), **self._kwargs(settings))
        return _generation(output)


def _config() -> RunnableConfig:
    return {"run_name": RUN_NAME, "tags": list(TAGS)}


def _generation(output: Any) -> Generation:
    if isinstance(output, BaseMessage):
        metadata = output.response_metadata or {}
        reason = metadata.get("finish_reason") or metadata.get("stop_reason")
        return Generation(text=output.text, finish_reason=finish_reason(reason))
    return Generation(text=str(output))


def from_langchain(
    llm: Any, *, prompt_template: str | None = None, max_concurrency: int = 8
) -> LangChainBackend:
    """A backend over a LangChain chat or completion model (see :class:`LangChainBackend`)."""
    return LangChainBackend(llm, prompt_template=prompt_template, max_concurrency=max_concurrency)
