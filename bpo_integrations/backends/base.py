"""The interface every optimizer backend implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from bpo_integrations.settings import Generation, GenerationSettings

if TYPE_CHECKING:
    from bpo_integrations.guards import Guards


class Backend(ABC):
    """Turns user prompts into raw rewrites. The backend owns the prompt format it sends.

    ``prompts`` are the user's prompts, not yet wrapped in any template. ``timeout`` is the time
    left in the caller's latency budget, in seconds, for the backend's own client timeouts.

    Backends raise :class:`~bpo_integrations.errors.TransientBackendError` for failures worth
    retrying, :class:`~bpo_integrations.errors.BackendUnavailableError` when the server cannot be
    reached, and :class:`~bpo_integrations.errors.BackendError` otherwise.
    """

    name: str = "backend"
    max_batch_size: int = 1
    """How many prompts one :meth:`generate` call handles efficiently (1: one request each)."""
    max_concurrency: int | None = None
    """How many calls the backend serves at once, if it knows (the optimizer's default)."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Rewrite each prompt; one :class:`Generation` per prompt, in order."""

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Async twin of :meth:`generate`; the default runs it in a worker thread."""
        return await asyncio.to_thread(self.generate, prompts, settings, timeout=timeout)

    def recommended_settings(self) -> GenerationSettings | None:
        """How this backend's model decodes best when no mode is named (``None``: stable)."""
        return None

    def recommended_guards(self) -> Guards | None:
        """The acceptance rules this backend's model needs when none are given (``None``:
        :class:`~bpo_integrations.guards.Guards`)."""
        return None

    def cache_identity(self) -> Hashable:
        """What distinguishes this backend's outputs (endpoint, model) in the optimizer's cache."""
        return (type(self).__name__, id(self))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients, threads or models."""
