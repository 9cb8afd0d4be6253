"""The record of one optimization: what went in, what came out, and whether it fell back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bpo_integrations.template import join_context


@dataclass(frozen=True)
class OptimizationResult:
    """The outcome of optimizing one prompt.

    ``text`` is what to send to the answering model: the optimized prompt (or the original, when
    the optimizer fell back) followed by the untouched ``context``.
    """

    original: str
    optimized: str
    backend: str
    latency_s: float
    context: str | None = None
    fell_back: bool = False
    fallback_reason: str | None = None
    rounds: tuple[str, ...] = ()
    cached: bool = False
    error: str | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        return join_context(self.optimized, self.context)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["rounds"] = list(self.rounds)
        data["text"] = self.text
        return data
