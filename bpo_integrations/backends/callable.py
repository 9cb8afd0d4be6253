"""A backend made from a plain function: wrap any rewriting code of your own."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable, Sequence

from bpo_integrations.backends.base import Backend
from bpo_integrations.settings import Generation, GenerationSettings

RewriteFn = Callable[[str], "str | Awaitable[str]"]


class CallableBackend(Backend):
    """A backend that calls ``fn(prompt) -> rewrite`` (sync or async) for each prompt.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> opt = BPOOptimizer(CallableBackend(lambda p: p + " Explain step by step."))
        >>> opt.optimize("Why is the sky blue?").text
        'Why is the sky blue? Explain step by step.'
    """

    name = "callable"

    def __init__(self, fn: RewriteFn, *, name: str = "callable") -> None:
        self.fn = fn
        self.name = name
        self._is_async = inspect.iscoroutinefunction(fn)

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        if self._is_async:
            raise TypeError("this CallableBackend wraps an async function: use the async API")
        return [Generation(text=str(self.fn(p)), finish_reason="eos_token") for p in prompts]

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        if not self._is_async:
            return await super().agenerate(prompts, settings, timeout=timeout)
        return [Generation(text=str(await self.fn(p)), finish_reason="eos_token") for p in prompts]  # type: ignore[misc]

    def cache_identity(self) -> Hashable:
        return ("callable", id(self.fn))
