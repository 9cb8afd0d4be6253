"""Reference-based quality of a prompt optimizer on held-out BPO pairs: chrF, BLEU, losses.

A system's outputs (one rewrite per held-out record) are scored against the reference optimized
prompts (``final_output``) with sacrebleu's corpus chrF and BLEU, and checked for what a rewrite
must never do: drop the record's context (the text a user pasted after the instruction) or its
protected content (code, URLs, numbers, quotes, placeholders; see
:mod:`bpo_integrations.guards`). The output producers take any backend, so every model (the
shipped default, ``THUDM/BPO`` on TGI, a new ``bpo-train sft`` run) is measured the same way.

Example:
    >>> from bpo_trainer.quality import DevRecord, score_system
    >>> records = [DevRecord(0, "Sum 2 and 3", "Sum 2 and 3", "", "Add 2 and 3; show the steps.")]
    >>> score = score_system("copy", records, ["Sum 2 and 3"])
    >>> (score.n, score.lost_context, score.lost_protected)
    (1, 0, 0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bpo_integrations.guards import missing_protected
from bpo_integrations.settings import GenerationSettings

if TYPE_CHECKING:
    from bpo_integrations.backends.base import Backend
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.optimizer import BPOOptimizer
    from bpo_integrations.result import OptimizationResult

ZERO_SHOT_SYSTEM = (
    "You improve prompts. Rewrite the user's prompt so that an AI assistant gives a more helpful "
    "and harmless answer: keep its meaning and every detail, make it clearer and more specific. "
    "Reply with the improved prompt only."
)
"""The system message of the zero-shot baseline (a chat model asked to improve the prompt)."""

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class DevRecord:
    """One held-out BPO pair.

    ``prompt`` is what the optimizer model was trained to rewrite (``final_input``: the
    instruction, and for records with a context, the context after it); ``reference`` is the
    optimized prompt (``final_output``).
    """

    index: int
    prompt: str
    instruction: str
    context: str
    reference: str

    @classmethod
    def from_record(cls, index: int, record: dict[str, Any]) -> DevRecord:
        """Read a record of BPO's ``train.json`` / ``val.json`` format."""
        prompt = (record.get("final_input") or "").strip()
        return cls(
            index=index,
            prompt=prompt,
            instruction=(record.get("instruction") or prompt).strip(),
            context=(record.get("context") or "").strip(),
            reference=(record.get("final_output") or "").strip(),
        )


@dataclass(frozen=True)
class SystemScore:
    """The scores of one system on a set of held-out records.

    ``lost_context``: outputs that do not contain the record's non-empty context verbatim
    (whitespace runs collapsed). ``lost_protected``: outputs missing a protected span of the
    prompt. ``unchanged``: outputs equal to the prompt. ``fell_back``: rewrites the optimizer
    rejected (for systems that run through :class:`~bpo_integrations.BPOOptimizer`).
    """

    name: str
    n: int
    chrf: float
    bleu: float
    lost_context: int
    lost_protected: int
    unchanged: int
    fell_back: int | None = None
    fallback_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corpus_scores(outputs: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """sacrebleu corpus ``(chrF, BLEU)`` of ``outputs`` against one reference each.

    Example:
        >>> corpus_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
        (100.0, 100.0)
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(outputs) != len(references):
        raise ValueError(f"got {len(outputs)} outputs for {len(references)} references")
    if not outputs:
        raise ValueError("nothing to score: no outputs")
    chrf = CHRF().corpus_score(list(outputs), [list(references)]).score
    bleu = BLEU().corpus_score(list(outputs), [list(references)]).score
    return round(float(chrf), 2), round(float(bleu), 2)


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def lost_context(record: DevRecord, output: str) -> bool:
    """Whether ``output`` dropped (or altered) the record's non-empty context."""
    return bool(record.context) and _collapse(record.context) not in _collapse(output)


def lost_protected(record: DevRecord, output: str) -> list[tuple[str, str]]:
    """The protected spans of the record's prompt that ``output`` does not keep verbatim."""
    return missing_protected(record.prompt, output)


def score_system(
    name: str,
    records: Sequence[DevRecord],
    outputs: Sequence[str],
    *,
    results: Sequence[OptimizationResult] | None = None,
) -> SystemScore:
    """Score one system's ``outputs`` (aligned with ``records``)."""
    if len(outputs) != len(records):
        raise ValueError(f"got {len(outputs)} outputs for {len(records)} records")
    chrf, bleu = corpus_scores(outputs, [r.reference for r in records])
    reasons: dict[str, int] = {}
    for result in results or ():
        if result.fell_back:
            kind = result.fallback_reason.value if result.fallback_reason else "unknown"
            reasons[kind] = reasons.get(kind, 0) + 1
    return SystemScore(
        name=name,
        n=len(records),
        chrf=chrf,
        bleu=bleu,
        lost_context=sum(lost_context(r, o) for r, o in zip(records, outputs, strict=True)),
        lost_protected=sum(
            bool(lost_protected(r, o)) for r, o in zip(records, outputs, strict=True)
        ),
        unchanged=sum(
            _collapse(o) == _collapse(r.prompt) for r, o in zip(records, outputs, strict=True)
        ),
        fell_back=None if results is None else sum(r.fell_back for r in results),
        fallback_reasons=reasons,
    )


# -- output producers -----------------------------------------------------------------------------


def copy_outputs(records: Sequence[DevRecord]) -> list[str]:
    """Baseline (a): the prompt, unchanged."""
    return [r.prompt for r in records]


def zero_shot_outputs(
    backend: LocalBackend,
    records: Sequence[DevRecord],
    settings: GenerationSettings,
    *,
    system: str = ZERO_SHOT_SYSTEM,
) -> list[str]:
    """Baseline (b): a chat model asked, through its chat template, to improve each prompt."""
    engine = backend.engine
    if not engine.has_chat_template:
        raise ValueError(
            f"the zero-shot baseline needs a chat model; {backend.resolved_model} has no chat "
            "template"
        )
    texts = [
        engine.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": r.prompt}]
        )
        for r in records
    ]
    return [g.text.strip() for g in backend.generate_raw(texts, settings)]


def raw_outputs(
    backend: Backend, records: Sequence[DevRecord], settings: GenerationSettings
) -> list[str]:
    """System (c): the optimizer model's completion of each whole prompt, nothing checked."""
    return [g.text.strip() for g in backend.generate([r.prompt for r in records], settings)]


def optimizer_outputs(
    optimizer: BPOOptimizer, records: Sequence[DevRecord]
) -> tuple[list[str], list[OptimizationResult]]:
    """System (d): through :class:`~bpo_integrations.BPOOptimizer`, guards and context handling.

    A record with a context has only its instruction optimized; the context is passed on
    verbatim after it (``result.text``), as an application using the middleware would do.
    """
    prompts = [r.instruction if r.context else r.prompt for r in records]
    contexts = [r.context or None for r in records]
    results = optimizer.optimize_batch(prompts, contexts=contexts)
    return [result.text for result in results], results


def greedy_settings(max_new_tokens: int) -> GenerationSettings:
    """The deterministic decoding every system of a quality table is measured with."""
    return GenerationSettings.for_mode("greedy", max_new_tokens=max_new_tokens)


def quality_table(scores: Sequence[SystemScore]) -> str:
    """A markdown table of ``scores``, one row per system.

    Example:
        >>> row = SystemScore("copy", 30, 59.4, 30.1, 0, 0, 30)
        >>> quality_table([row]).splitlines()[2]
        '| copy | 59.4 | 30.1 | 0/30 | 0/30 | 30 | – |'
    """
    lines = [
        "| system | chrF | BLEU | lost context | lost protected | unchanged | fell back |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scores:
        fell_back = "–" if s.fell_back is None else str(s.fell_back)
        if s.fallback_reasons:
            fell_back += " (" + ", ".join(f"{k} {v}" for k, v in s.fallback_reasons.items()) + ")"
        lines.append(
            f"| {s.name} | {s.chrf:.1f} | {s.bleu:.1f} | {s.lost_context}/{s.n} | "
            f"{s.lost_protected}/{s.n} | {s.unchanged} | {fell_back} |"
        )
    return "\n".join(lines)
