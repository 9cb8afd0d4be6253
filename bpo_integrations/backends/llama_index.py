"""A LlamaIndex LLM you already have (or ``Settings.llm``) as the optimizer (llama-index-core)."""

from __future__ import annotations

from typing import Any

from bpo_integrations.backends._llm import LLMBackend, finish_reason
from bpo_integrations.settings import Generation, GenerationSettings

try:
    from llama_index.core.base.llms.base import BaseLLM
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.settings import Settings
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "LlamaIndexBackend needs llama-index-core: pip install 'bpo-integrations[llamaindex]'"
    ) from error


class LlamaIndexBackend(LLMBackend):
    """Runs the optimizer on a LlamaIndex LLM: ``BPOOptimizer(LlamaIndexBackend(llm))``.

    A chat model (``llm.metadata.is_chat_model``) gets one user message, the BPO instruction and
    the prompt, through ``chat``/``achat``; a completion model the raw BPO template through
    ``complete``/``acomplete`` (``formatted=True``: no second template around it). ``llm=None``
    takes ``Settings.llm``, as ``HyDEQueryTransform`` does. The model decodes with its own
    settings.

    Args:
        llm: the LLM; ``None``: ``Settings.llm`` (read now).
        prompt_template: the model's input, a ``str.format`` template with a ``{prompt}``
            field (LlamaIndex's ``PromptTemplate`` syntax); the default is the BPO instruction
            (chat) or the BPO template (completion).
        max_concurrency: concurrent calls for a list of prompts.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> from bpo_integrations import BPOOptimizer
        >>> backend = LlamaIndexBackend(MockLLM())  # a completion model: the raw BPO template
        >>> backend.chat, backend.prompt_template.endswith("{prompt} [/INST]")
        (False, True)
    """

    def __init__(
        self, llm: Any = None, *, prompt_template: str | None = None, max_concurrency: int = 8
    ) -> None:
        llm = Settings.llm if llm is None else llm
        if not isinstance(llm, BaseLLM):
            raise TypeError(
                f"LlamaIndexBackend takes a LlamaIndex LLM (llama_index.core.llms.LLM), got "
                f"{type(llm).__name__}; for a function use CallableBackend(fn)"
            )
        self.llm = llm
        super().__init__(
            chat=bool(llm.metadata.is_chat_model),
            prompt_template=prompt_template,
            max_concurrency=max_concurrency,
            name="llama_index",
        )

    def __repr__(self) -> str:
        return f"LlamaIndexBackend({type(self.llm).__name__}, chat={self.chat})"

    @property
    def where(self) -> str:
        return f"the LlamaIndex LLM {type(self.llm).__name__}"

    def _call(self, text: str, settings: GenerationSettings) -> Generation:
        if self.chat:
            return _from_chat(self.llm.chat([_user(text)]))
        return _from_completion(self.llm.complete(text, formatted=True))

    async def _acall(self, text: str, settings: GenerationSettings) -> Generation:
        if self.chat:
            return _from_chat(await self.llm.achat([_user(text)]))
        return _from_completion(await self.llm.acomplete(text, formatted=True))


def _user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


def _from_chat(response: Any) -> Generation:
    return Generation(
        text=response.message.content or "", finish_reason=finish_reason(_raw_finish(response))
    )


def _from_completion(response: Any) -> Generation:
    return Generation(text=response.text or "", finish_reason=finish_reason(_raw_finish(response)))


def _raw_finish(response: Any) -> Any:
    """The finish reason in the provider's raw answer, when it is an OpenAI-style completion."""
    raw = response.raw
    choices = raw.get("choices") if isinstance(raw, dict) else getattr(raw, "choices", None)
    if not choices:
        return None
    choice = choices[0]
    if isinstance(choice, dict):
        return choice.get("finish_reason")
    return getattr(choice, "finish_reason", None)


def from_llama_index(
    llm: Any = None, *, prompt_template: str | None = None, max_concurrency: int = 8
) -> LlamaIndexBackend:
    """A backend over a LlamaIndex LLM, ``Settings.llm`` by default (see
    :class:`LlamaIndexBackend`)."""
    return LlamaIndexBackend(llm, prompt_template=prompt_template, max_concurrency=max_concurrency)
