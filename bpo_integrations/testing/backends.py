"""A real backend for tests: rewrites by appending a sentence and records every call it serves."""

from __future__ import annotations

from collections.abc import Sequence

from bpo_integrations.backends.base import Backend
from bpo_integrations.settings import Generation, GenerationSettings


class RecordingBackend(Backend):
    """Rewrites each prompt as ``prompt + suffix``; keeps the prompts and settings of every call.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> backend = RecordingBackend(" Explain step by step.")
        >>> BPOOptimizer(backend).optimize("Why?").text
        'Why? Explain step by step.'
        >>> backend.calls, backend.prompts, backend.modes
        ([['Why?']], ['Why?'], ['stable'])
    """

    name = "recording"

    def __init__(self, suffix: str, *, max_batch_size: int = 1) -> None:
        self.suffix = suffix
        self.max_batch_size = max_batch_size
        self.calls: list[list[str]] = []
        self.modes: list[str] = []

    @property
    def prompts(self) -> list[str]:
        """Every prompt served, in order."""
        return [prompt for call in self.calls for prompt in call]

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        self.calls.append(list(prompts))
        self.modes.append(settings.mode)
        return [Generation(text=p + self.suffix, finish_reason="eos_token") for p in prompts]
