"""Checks that decide whether an optimized prompt may replace the original.

Each check returns ``None`` when the rewrite is acceptable, or a short reason string; the
optimizer then falls back to the original prompt and records that reason.
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

__all__ = [
    "NO_GUARDS",
    "PROTECTED_PATTERNS",
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
    (``reject_repeats``: the copy is better).

    Example:
        >>> guards = Guards()
        >>> guards.check("Give two examples of customer service.", "Sure! 1. A refund.")
        'answered_instead: opens as an answer'
        >>> print(guards.check("Summarize this novel", 'Summarize "The Road" by Cormac McCarthy.'))
        invented_content: quoted '"The Road"', name 'Cormac', name 'McCarthy'
        >>> guards.check("Rank these vegetables by how nutritious they are", "Describe fruits")
        "changed_intent: kept 0 of 3 content words, dropped 'rank', 'vegetables', 'nutritious'"
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

    def check(
        self,
        original: str,
        rewritten: str,
        *,
        finish_reason: str = "unknown",
        context: str | None = None,
    ) -> str | None:
        """The reason to reject ``rewritten`` as a rewrite of ``original``, or ``None``.

        ``context`` (the text passed on verbatim after the prompt) counts as known: a name the
        rewrite takes from it is not invented.
        """
        if not rewritten.strip():
            return "empty_output"
        if self.reject_truncated and finish_reason == "length":
            return "runaway_output: the optimizer hit its token limit"
        limit = self.max_length_ratio * len(original) + self.length_slack
        if len(rewritten) > limit:
            return f"runaway_output: {len(rewritten)} characters, limit {int(limit)}"
        if self.keep_protected:
            missing = missing_protected(original, rewritten)
            if missing:
                shown = ", ".join(f"{kind} {span[:40]!r}" for kind, span in missing[:3])
                return f"lost_protected_content: {shown}"
        if self.reject_answers:
            why = answers_instead(original, rewritten)
            if why is not None:
                return f"answered_instead: {why}"
        if self.reject_invented:
            invented = invented_content(original, rewritten, context=context)
            if invented:
                shown = ", ".join(f"{i.kind} {i.text[:40]!r}" for i in invented[:3])
                return f"invented_content: {shown}"
        if self.min_kept_content > 0:
            dropped, total = dropped_content(original, rewritten)
            if total >= self.min_content_words and total - len(dropped) < (
                self.min_kept_content * total
            ):
                shown = ", ".join(repr(w) for w in dropped[:5])
                kept = total - len(dropped)
                return f"changed_intent: kept {kept} of {total} content words, dropped {shown}"
        if self.reject_repeats:
            repeated = repeated_sentences(original, rewritten)
            if repeated:
                return f"repeated_text: {repeated[0][:80]!r}"
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
