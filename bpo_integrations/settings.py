"""Generation settings for the optimizer, and the reference implementation's two decoding modes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Mode = Literal["stable", "aggressive", "greedy"]

FinishReason = Literal["eos_token", "stop_sequence", "length"]
"""Why a generation stopped, in TGI's words: the model's end token, a stop sequence, or the token
limit. A :class:`Generation` from a backend that does not say is ``"unknown"``."""

AGGRESSIVE_BAD_WORDS: tuple[str, ...] = ("[PROTECT]", "\n\n[PROTECT]", "[KEEP", "[INSTRUCTION]")
"""Words the reference's aggressive mode forbids the model to write."""

AGGRESSIVE_CUT_MARKERS: tuple[str, ...] = ("[KE", "[INS", "[PRO")
"""The reference's aggressive mode cuts the rewrite at the first of these markers."""


@dataclass(frozen=True)
class GenerationSettings:
    """How the optimizer model decodes. Use :meth:`for_mode` for the reference's presets.

    ``min_new_tokens_from_prompt`` asks the backend for at least as many new tokens as the prompt
    has (plus 5), the aggressive mode's way of making sure the prompt is actually rewritten.
    """

    mode: Mode = "stable"
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.9
    seed: int | None = None
    bad_words: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    min_new_tokens_from_prompt: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0):
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def for_mode(cls, mode: Mode = "stable", **overrides: object) -> GenerationSettings:
        """The reference implementation's presets.

        - ``stable``: sampling, temperature 0.6, top_p 0.9.
        - ``aggressive``: temperature 0.9, top_p 0.9, the bad-word list, cut at ``[KE``/``[INS``/
          ``[PRO``, and a minimum length so that the prompt is actually rewritten.
        - ``greedy``: no sampling, for reproducible rewrites.
        """
        if mode == "stable":
            base = cls(mode="stable", do_sample=True, temperature=0.6, top_p=0.9)
        elif mode == "aggressive":
            base = cls(
                mode="aggressive",
                do_sample=True,
                temperature=0.9,
                top_p=0.9,
                bad_words=AGGRESSIVE_BAD_WORDS,
                stop=AGGRESSIVE_CUT_MARKERS,
                min_new_tokens_from_prompt=True,
            )
        elif mode == "greedy":
            base = cls(mode="greedy", do_sample=False, temperature=1.0, top_p=1.0)
        else:
            raise ValueError(f"unknown mode {mode!r}: choose 'stable', 'aggressive' or 'greedy'")
        return replace(base, **overrides) if overrides else base  # type: ignore[arg-type]

    def cache_key(self) -> tuple[object, ...]:
        return (
            self.mode,
            self.max_new_tokens,
            self.do_sample,
            self.temperature,
            self.top_p,
            self.seed,
            self.bad_words,
            self.stop,
            self.min_new_tokens_from_prompt,
        )


@dataclass(frozen=True)
class Generation:
    """One completion from a backend: the text and why generation stopped.

    What a backend knows besides, when it knows it: the completion's ``token_ids`` and the
    prompt's length in tokens (local), the ``seed`` the server drew (TGI), the ``model`` that
    answered and the server's own ``raw_finish_reason`` (OpenAI-compatible servers).
    """

    text: str
    finish_reason: FinishReason | Literal["unknown"] = "unknown"
    generated_tokens: int | None = None
    token_ids: tuple[int, ...] | None = field(default=None, compare=False)
    prompt_tokens: int | None = field(default=None, compare=False)
    seed: int | None = field(default=None, compare=False)
    model: str | None = field(default=None, compare=False)
    raw_finish_reason: str | None = field(default=None, compare=False)
