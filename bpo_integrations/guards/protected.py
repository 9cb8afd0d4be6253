"""Protected content: the spans of a prompt that a rewrite must keep verbatim.

Code, URLs, e-mail addresses, placeholders, quotes and numbers are facts the user gave; a rewrite
that drops or alters one is rejected (``lost_protected_content``).
"""

from __future__ import annotations

import re
from functools import lru_cache

_FENCED_CODE = re.compile(r"```.*?```|~~~.*?~~~", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"')\]]+|\bwww\.[^\s<>\"')\]]+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PLACEHOLDER = re.compile(r"\{\{?[A-Za-z_][\w.\-]*\}?\}")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,:/]\d+)*%?")
_DOUBLE_QUOTED = re.compile(r"\"[^\"\n]{1,300}\"|“[^”\n]{1,300}”|«[^»\n]{1,300}»")
_SINGLE_QUOTED = re.compile(r"(?<![\w'])'[^'\n]{1,300}'(?![\w'])")

PROTECTED_PATTERNS: dict[str, re.Pattern[str]] = {
    "fenced_code": _FENCED_CODE,
    "inline_code": _INLINE_CODE,
    "url": _URL,
    "email": _EMAIL,
    "placeholder": _PLACEHOLDER,
    "quoted": _DOUBLE_QUOTED,
    "single_quoted": _SINGLE_QUOTED,
    "number": _NUMBER,
}
"""Content kinds a rewrite must keep verbatim, in the order they are cut out of the prompt."""


def protected_spans(text: str) -> list[tuple[str, str]]:
    """The ``(kind, span)`` pairs of ``text`` that a rewrite must keep verbatim.

    Spans inside an earlier kind (a number in a URL, a URL in a code block) are not listed again.

    Example:
        >>> protected_spans('Fix `foo()` in {file} and see https://x.org/a?b=1')
        [('inline_code', '`foo()`'), ('placeholder', '{file}'), ('url', 'https://x.org/a?b=1')]
    """
    return list(_protected_spans(text))


@lru_cache(maxsize=256)  # a prompt's spans, found once for all the rewrites judged against it
def _protected_spans(text: str) -> tuple[tuple[str, str], ...]:
    spans: list[tuple[str, str]] = []
    remaining = text
    for kind, pattern in PROTECTED_PATTERNS.items():
        found = [m.group(0) for m in pattern.finditer(remaining)]
        if not found:
            continue
        if kind == "url":
            found = [s.rstrip(".,;:!?") for s in found]
        if kind == "quoted" or kind == "single_quoted":
            found = [s for s in found if s[1:-1].strip()]
        # A match that spans a cut-out earlier kind is not in the text: that kind protects it.
        spans.extend((kind, s) for s in found if s in text)
        remaining = pattern.sub(" ", remaining)
    order = {span: text.find(span) for _, span in spans}
    return tuple(sorted(spans, key=lambda item: order[item[1]]))


def _normalize_code(span: str) -> str:
    return re.sub(r"\s+", " ", span).strip()


def missing_protected(original: str, rewritten: str) -> list[tuple[str, str]]:
    """The protected spans of ``original`` that ``rewritten`` does not contain verbatim.

    Code blocks are compared with whitespace runs collapsed; quoted strings may change quote style.

    Example:
        >>> missing_protected("Give 3 tips", "Give three tips")
        [('number', '3')]
    """
    if original in rewritten:  # every span is a piece of the original: all are kept
        return []
    missing = []
    collapsed: str | None = None
    for kind, span in _protected_spans(original):
        if span in rewritten:
            continue
        if kind == "fenced_code":
            if collapsed is None:
                collapsed = _normalize_code(rewritten)
            if _normalize_code(span) in collapsed:
                continue
        if kind in ("quoted", "single_quoted") and span[1:-1] in rewritten:
            continue
        if kind == "url" and span.rstrip(".,;:!?") in rewritten:
            continue
        missing.append((kind, span))
    return missing
