"""What the backends over a framework's LLM share: the template, concurrency and error mapping."""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any

from bpo_integrations._loop import gather, may_block, on_sync_api_loop
from bpo_integrations.backends._http import map_in_threads, raise_mapped
from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    BPOError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.retry import TRANSIENT_STATUS
from bpo_integrations.settings import Generation, GenerationSettings
from bpo_integrations.template import BPO_INSTRUCTION, BPO_TEMPLATE

CHAT_TEMPLATE = BPO_INSTRUCTION + "\n{prompt}"
"""The user message a chat model gets: the BPO instruction, then the prompt."""

COMPLETION_TEMPLATE = BPO_TEMPLATE
"""The text a completion model gets: the raw BPO template ``[INST] ... [/INST]``."""


class LLMBackend(Backend):
    """A backend over an LLM object of another framework; subclasses make the calls.

    ``prompt_template`` (a ``str.format`` template with one ``{prompt}`` field) turns the user's
    prompt into the model's input; the defaults are :data:`CHAT_TEMPLATE` for chat models and
    :data:`COMPLETION_TEMPLATE` for completion models. The optimizer's async API calls the
    model's async API; its sync API (``optimize``, ``invoke``) the model's sync API. The LLM
    stays yours: :meth:`close` does not close it.
    """

    max_batch_size = 1

    def __init__(
        self, *, chat: bool, prompt_template: str | None, max_concurrency: int, name: str
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.chat = chat
        self.max_concurrency: int = max_concurrency
        self.name = name
        self.prompt_template = prompt_template or (CHAT_TEMPLATE if chat else COMPLETION_TEMPLATE)

    @property
    def prompt_template(self) -> str:
        return self._prompt_template

    @prompt_template.setter
    def prompt_template(self, template: str) -> None:
        try:
            template.format(prompt="")
        except (AttributeError, IndexError, KeyError, ValueError) as error:
            raise ValueError(
                f"the optimizer's prompt template must be a str.format template whose only field "
                f"is {{prompt}} (double other braces), got {template!r}: {error!r}"
            ) from None
        if "{prompt}" not in template:
            raise ValueError(f"the optimizer's prompt template has no {{prompt}}: {template!r}")
        self._prompt_template = template

    @property
    @abstractmethod
    def where(self) -> str:
        """How error messages name the LLM."""

    @abstractmethod
    def _call(self, text: str, settings: GenerationSettings) -> Generation:
        """One synchronous call of the LLM on its templated input."""

    @abstractmethod
    async def _acall(self, text: str, settings: GenerationSettings) -> Generation:
        """One call through the LLM's async API."""

    def cache_identity(self) -> Hashable:
        return (self.name, id(self), self.prompt_template)

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        started = time.perf_counter()

        def one(prompt: str) -> Generation:
            try:
                return self._call(self.prompt_template.format(prompt=prompt), settings)
            except Exception as error:
                raise_mapped(self._map_error, error, started)

        return map_in_threads(one, prompts, self.max_concurrency)

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        if on_sync_api_loop():
            # Called through the sync API: use the model's sync API too. An async client made on
            # this private loop would be bound to it, and fail later on the caller's own loop.
            if may_block():
                return self.generate(prompts, settings, timeout=timeout)
            return await asyncio.to_thread(self.generate, prompts, settings, timeout=timeout)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        started = time.perf_counter()

        async def one(prompt: str) -> Generation:
            async with semaphore:
                try:
                    return await self._acall(self.prompt_template.format(prompt=prompt), settings)
                except Exception as error:
                    raise_mapped(self._map_error, error, started)

        if len(prompts) == 1:
            return [await one(prompts[0])]
        return await gather(*(one(p) for p in prompts))

    def _map_error(self, error: BaseException, elapsed: float) -> BaseException:
        return map_llm_error(error, self.where, elapsed)


def map_llm_error(error: BaseException, where: str, elapsed: float) -> BaseException:
    """A framework LLM's error in our vocabulary, read from what any client's errors expose."""
    if isinstance(error, BPOError):
        return error
    names = {cls.__name__ for cls in type(error).__mro__}
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    text = f"{where} failed: {type(error).__name__}: {error}"
    if isinstance(error, TimeoutError | asyncio.TimeoutError) or any("Timeout" in n for n in names):
        return OptimizationTimeoutError(f"no answer from {where} after {elapsed:.2f}s ({error})")
    if status in TRANSIENT_STATUS or "RateLimitError" in names:
        return TransientBackendError(text)
    if isinstance(error, ConnectionError) or any("Connect" in n for n in names):
        return BackendUnavailableError(text)
    return BackendError(text)


def finish_reason(value: Any) -> Any:
    """A provider's finish reason (``"stop"``, ``"length"``, ...) as a :class:`Generation`'s."""
    if value == "length" or value == "max_tokens":
        return "length"
    if value in ("stop", "end_turn", "eos", "eos_token", "STOP"):
        return "eos_token"
    return "unknown"
