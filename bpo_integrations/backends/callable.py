"""A backend made from a plain function: wrap any rewriting code of your own."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable, Sequence

from bpo_integrations._loop import may_block
from bpo_integrations.backends.base import Backend
from bpo_integrations.settings import Generation, GenerationSettings

RewriteFn = Callable[[str], "str | Awaitable[str]"]


class CallableBackend(Backend):
    """A backend that calls ``fn(prompt) -> rewrite`` (sync or async) for each prompt.

    A sync ``fn`` called through the optimizer's sync API (``optimize``, ``optimize_batch``,
    LangChain's ``invoke``) runs inline, in the caller's thread: no hop to a worker thread. The
    latency budget (``BPOOptimizer(timeout=...)``) cannot interrupt it there; a rewrite that
    comes after the budget is discarded and the prompt falls back with a ``timeout`` reason.
    Through the async API (``aoptimize``, ``ainvoke``), and for the prompt groups of a batch that
    run side by side, a sync ``fn`` runs in a worker thread so that it never blocks an event loop.

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
            if may_block():
                return self.generate(prompts, settings, timeout=timeout)
            return await super().agenerate(prompts, settings, timeout=timeout)
        return [Generation(text=str(await self.fn(p)), finish_reason="eos_token") for p in prompts]  # type: ignore[misc]

    def cache_identity(self) -> Hashable:
        return ("callable", id(self.fn))
