"""The record of one optimization: what went in, what came out, and whether it fell back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

from bpo_integrations.template import join_context


class FallbackReason(str, Enum):
    """Why the optimizer kept the original prompt. The value is the word records carry.

    Example:
        >>> FallbackReason.TIMEOUT.value, FallbackReason.TIMEOUT.is_backend_failure
        ('timeout', True)
        >>> FallbackReason("changed_intent").is_backend_failure
        False
    """

    EMPTY_INPUT = "empty_input"
    INPUT_TOO_LONG = "input_too_long"
    CIRCUIT_OPEN = "circuit_open"
    EMPTY_OUTPUT = "empty_output"
    RUNAWAY_OUTPUT = "runaway_output"
    LOST_PROTECTED_CONTENT = "lost_protected_content"
    ANSWERED_INSTEAD = "answered_instead"
    INVENTED_CONTENT = "invented_content"
    CHANGED_INTENT = "changed_intent"
    REPEATED_TEXT = "repeated_text"
    NOT_IMPROVED = "not_improved"
    TIMEOUT = "timeout"
    BACKEND_OVERLOADED = "backend_overloaded"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_ERROR = "backend_error"
    UNEXPECTED_ERROR = "unexpected_error"

    def __str__(self) -> str:
        return self.value

    @property
    def is_backend_failure(self) -> bool:
        """The backend failed (down, busy, erroring, too slow, or skipped by the circuit breaker),
        as opposed to a rewrite the guards rejected or an input left alone: worth another try."""
        return self in _BACKEND_FAILURES

    def message(self, detail: str = "") -> str:
        """The reason as one readable line: ``"timeout: no answer within 2s"``."""
        return f"{self.value}: {detail}" if detail else self.value


_BACKEND_FAILURES = frozenset(
    {
        FallbackReason.CIRCUIT_OPEN,
        FallbackReason.TIMEOUT,
        FallbackReason.BACKEND_OVERLOADED,
        FallbackReason.BACKEND_UNAVAILABLE,
        FallbackReason.BACKEND_ERROR,
        FallbackReason.UNEXPECTED_ERROR,
    }
)


@dataclass(frozen=True)
class OptimizationResult:
    """The outcome of optimizing one prompt.

    ``text`` is what to send to the answering model: the optimized prompt (or the original, when
    the optimizer fell back) followed by the untouched ``context``. A fallback has its
    ``fallback_reason`` and a ``fallback_detail``; records (:meth:`to_dict`) carry both as one
    ``fallback_reason`` line (:attr:`fallback_message`).
    """

    original: str
    optimized: str
    backend: str
    latency_s: float
    context: str | None = None
    fell_back: bool = False
    fallback_reason: FallbackReason | None = None
    rounds: tuple[str, ...] = ()
    cached: bool = False
    error: str | None = field(default=None, compare=False)
    fallback_detail: str = ""

    @property
    def text(self) -> str:
        return join_context(self.optimized, self.context)

    @property
    def fallback_message(self) -> str | None:
        """``"kind: detail"`` of a fallback (``None`` when it did not fall back)."""
        if self.fallback_reason is None:
            return None
        return self.fallback_reason.message(self.fallback_detail)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        del data["fallback_detail"]
        data["fallback_reason"] = self.fallback_message
        data["rounds"] = list(self.rounds)
        data["text"] = self.text
        return data
