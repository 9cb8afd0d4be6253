"""Checks that decide whether an optimized prompt may replace the original.

:meth:`Guards.check` returns ``None`` when the rewrite is acceptable, or a :class:`GuardFailure`
(the :class:`~bpo_integrations.result.FallbackReason` and a detail); the optimizer then falls back
to the original prompt and records that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpo_integrations.guards.answer import answers_instead, is_request
from bpo_integrations.guards.content import (
    Invented,
    dropped_content,
    invented_content,
    repeated_sentences,
)
from bpo_integrations.guards.protected import (
    PROTECTED_PATTERNS,
    missing_protected,
    protected_spans,
)
from bpo_integrations.result import FallbackReason
from bpo_integrations.settings import FinishReason

__all__ = [
    "DEFAULT_MODEL_GUARDS",
    "NO_GUARDS",
    "PROTECTED_PATTERNS",
    "GuardFailure",
    "Guards",
    "Invented",
    "answers_instead",
    "dropped_content",
    "invented_content",
    "is_request",
    "missing_protected",
    "protected_spans",
    "repeated_sentences",
]


@dataclass(frozen=True)
class GuardFailure:
    """Why a guard rejected a rewrite: the reason and a readable detail."""

    reason: FallbackReason
    detail: str = ""

    def __str__(self) -> str:
        return self.reason.message(self.detail)


@dataclass(frozen=True)
class Guards:
    """The acceptance rules for a rewrite.

    A rewrite is rejected when it is empty, when it ran away in length (the backend stopped at its
    token limit, or it is longer than ``max_length_ratio`` times the original plus ``length_slack``
    characters), when it dropped protected content (``keep_protected``), when it answers the
    prompt instead of rewriting it (``reject_answers``), when it makes up a quoted string, a name
    or a number that neither the prompt nor its context has (``reject_invented``), or when it
    keeps less than ``min_kept_content`` of the prompt's content words (``changed_intent``; only
    for prompts with at least ``min_content_words`` of them; 0 turns the check off), or when it
    says a sentence of the prompt more often than the prompt does, twice or more
    (``reject_repeats``: the copy is better), or, with ``min_length_ratio`` set, when it is not
    longer than that many times the original (``not_improved``: the keep rule, see
    :data:`DEFAULT_MODEL_GUARDS`).

    Example:
        >>> guards = Guards()
        >>> failure = guards.check("Give two examples of customer service.", "Sure! 1. A refund.")
        >>> failure.reason, failure.detail
        (<FallbackReason.ANSWERED_INSTEAD: 'answered_instead'>, 'opens as an answer')
        >>> print(guards.check("Summarize this novel", 'Summarize "The Road" by Cormac McCarthy.'))
        invented_content: quoted '"The Road"', name 'Cormac', name 'McCarthy'
        >>> print(guards.check("Rank these vegetables by nutrition", "Describe fruits"))
        changed_intent: kept 0 of 3 content words, dropped 'rank', 'vegetables', 'nutrition'
    """

    max_length_ratio: float = 8.0
    length_slack: int = 1200
    keep_protected: bool = True
    reject_truncated: bool = True
    reject_answers: bool = True
    reject_invented: bool = True
    min_kept_content: float = 1 / 3
    min_content_words: int = 3
    reject_repeats: bool = True
    min_length_ratio: float = 0.0

    def check(
        self,
        original: str,
        rewritten: str,
        *,
        finish_reason: FinishReason | str = "unknown",
        context: str | None = None,
    ) -> GuardFailure | None:
        """The reason to reject ``rewritten`` as a rewrite of ``original``, or ``None``.

        ``context`` (the text passed on verbatim after the prompt) counts as known: a name the
        rewrite takes from it is not invented.
        """
        if not rewritten.strip():
            return GuardFailure(FallbackReason.EMPTY_OUTPUT)
        if self.reject_truncated and finish_reason == "length":
            return GuardFailure(FallbackReason.RUNAWAY_OUTPUT, "the optimizer hit its token limit")
        limit = self.max_length_ratio * len(original) + self.length_slack
        if len(rewritten) > limit:
            detail = f"{len(rewritten)} characters, limit {int(limit)}"
            return GuardFailure(FallbackReason.RUNAWAY_OUTPUT, detail)
        if self.keep_protected:
            missing = missing_protected(original, rewritten)
            if missing:
                shown = ", ".join(f"{kind} {span[:40]!r}" for kind, span in missing[:3])
                return GuardFailure(FallbackReason.LOST_PROTECTED_CONTENT, shown)
        if self.reject_answers:
            why = answers_instead(original, rewritten)
            if why is not None:
                return GuardFailure(FallbackReason.ANSWERED_INSTEAD, why)
        if self.reject_invented:
            invented = invented_content(original, rewritten, context=context)
            if invented:
                shown = ", ".join(f"{i.kind} {i.text[:40]!r}" for i in invented[:3])
                return GuardFailure(FallbackReason.INVENTED_CONTENT, shown)
        if self.min_kept_content > 0:
            dropped, total = dropped_content(original, rewritten)
            if total >= self.min_content_words and total - len(dropped) < (
                self.min_kept_content * total
            ):
                shown = ", ".join(repr(w) for w in dropped[:5])
                kept = total - len(dropped)
                detail = f"kept {kept} of {total} content words, dropped {shown}"
                return GuardFailure(FallbackReason.CHANGED_INTENT, detail)
        if self.reject_repeats:
            repeated = repeated_sentences(original, rewritten)
            if repeated:
                return GuardFailure(FallbackReason.REPEATED_TEXT, repr(repeated[0][:80]))
        if self.min_length_ratio > 0 and len(rewritten) <= self.min_length_ratio * len(original):
            ratio = len(rewritten) / max(1, len(original))
            detail = f"{ratio:.2f} times the prompt's length, at most {self.min_length_ratio:g}"
            return GuardFailure(FallbackReason.NOT_IMPROVED, detail)
        return None


NO_GUARDS = Guards(
    max_length_ratio=float("inf"),
    keep_protected=False,
    reject_truncated=False,
    reject_answers=False,
    reject_invented=False,
    min_kept_content=0.0,
    reject_repeats=False,
)


DEFAULT_MODEL_GUARDS = Guards(min_length_ratio=1.7)
"""The guards ``BPOOptimizer()`` applies to the shipped default model: :class:`Guards` plus the
keep rule, where the original goes through unless the rewrite is clearly longer than it.

The BPO rewrites the model learned from add what an answer needs (details, criteria, a format);
a rewrite of the small default model that adds little length has reworded the prompt instead,
trading the user's words for its own, and the original scores as well or better against the
BPO references. Length is what the rule looks at because, of the cheap scorers tried
(similarity to the original, word overlap, share of new words, length), it is the one that
raised both chrF and BLEU the most on the ``val.json`` records outside the dev split (which the
model saw in training); the threshold was chosen there, never on the dev split
(``python -m bpo_trainer.guard_report report`` prints both). Concise rewrites of a stronger
optimizer (ChatGPT's in the BPO data, ``THUDM/BPO``) are often good, so other backends get
plain :class:`Guards`.
"""
