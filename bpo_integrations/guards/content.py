"""Content checks: a rewrite must not make up specifics, must keep what the prompt is about, and
must not say the same thing twice.

A small optimizer model fills a prompt's gaps with made-up specifics ("the lyrics of the following
song" becomes "the lyrics of "The Nightingale" by the band "The Nightingale""; "given two text
samples" gains two invented samples), drifts to another request and drops the prompt's own
words, or repeats the prompt's sentence instead of improving it. All are caught here by comparing
words only: no model, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from bpo_integrations.guards.protected import _DOUBLE_QUOTED, _NUMBER
from bpo_integrations.guards.words import (
    GENERIC_NAMES,
    REQUEST_WORDS,
    STOPWORDS,
    content_words,
    stem,
    vocabulary,
    words,
)

_CAPITALIZED = re.compile(r"\b[A-Z][\w’'&-]*|\b[A-Z]{2,}\b")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*(?:[-*•]|\d+[.)])?\s*|[\"“(\[]\s*)$")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_LIST_NUMBER = re.compile(r"(?<![\w.])\d{1,2}[.)](?=\s)")
_GIVEN_MATERIAL = re.compile(
    r"\b(?:following|given|provided|below|above|attached|aforementioned|this|these)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Invented:
    """A specific of the rewrite that neither the prompt nor its context has."""

    kind: str  # "quoted", "name" or "number"
    text: str


def _unwrap(text: str) -> str:
    """``text`` without a pair of quotes around all of it (inner quotes would pair up wrongly)."""
    text = text.strip()
    if len(text) >= 2 and text[0] + text[-1] in ('""', "“”"):
        return text[1:-1]
    return text


def _quoted(text: str) -> list[str]:
    return [m.group(0) for m in _DOUBLE_QUOTED.finditer(text) if m.group(0)[1:-1].strip()]


def _is_sentence_start(text: str, index: int) -> bool:
    return bool(_SENTENCE_START.search(text[max(0, index - 12) : index]))


def _names(text: str) -> list[str]:
    """Capitalized words that are not the first of a sentence, a list item or a quote."""
    found = []
    for match in _CAPITALIZED.finditer(text):
        word = match.group(0).rstrip("’'-")
        lowered = re.split(r"['’]", word, maxsplit=1)[0].lower()
        if lowered in STOPWORDS or lowered in REQUEST_WORDS or lowered in GENERIC_NAMES:
            continue
        if len(lowered) < 2:
            continue
        if _is_sentence_start(text, match.start()):
            continue
        found.append(word)
    return found


def _numbers(text: str) -> list[str]:
    """Numbers of ``text``, except the numbers of list items ("1. ", "2) ")."""
    markers = {m.start() for m in _LIST_NUMBER.finditer(text)}
    return [m.group(0) for m in _NUMBER.finditer(text) if m.start() not in markers]


def _is_title_or_sentence(inner: str) -> bool:
    """A quoted string that names something ("The Nightingale") or says something (four words
    or more), not a one-word label or a format ("YYYY-MM-DD")."""
    tokens = words(inner)
    if len(tokens) < 2 or not any(c.islower() for c in inner):
        return False
    if len(tokens) >= 4:
        return True
    return all(
        w[0].isupper() for w in re.findall(r"[^\W\d_]+", inner) if w.lower() not in STOPWORDS
    )


@lru_cache(maxsize=256)  # per prompt, for all the rewrites judged against it
def _points_at_given_material(original: str) -> bool:
    return bool(_GIVEN_MATERIAL.search(original))


def invented_content(
    original: str, rewritten: str, *, context: str | None = None
) -> list[Invented]:
    """The specifics of ``rewritten`` that neither ``original`` nor ``context`` has.

    - A quoted title or sentence ("The Nightingale", "The new employee was nervous.") most of
      whose content words are new: made-up material, whatever the prompt.
    - A name (a capitalized word inside a sentence, not a request word such as "Please") or a
      number (list items aside) that the source lacks, when the prompt points at material it
      was given ("the following song", "this painting", "the given text"): that material, not
      the optimizer, must supply such specifics, and the optimizer never sees it. Elsewhere a
      new name is often knowledge a good rewrite adds ("Brave New World" by Aldous Huxley).

    Example:
        >>> invented_content(
        ...     "Complete the lyrics of the following song",
        ...     'Complete the lyrics of "The Nightingale" by the Beatles, all 3 verses.',
        ... )
        [Invented(kind='quoted', text='"The Nightingale"'), Invented(kind='name', \
text='Beatles'), Invented(kind='number', text='3')]
        >>> invented_content("Summarize Brave New World", "Summarize Brave New World by Huxley.")
        []
    """
    source = original if not context else f"{original}\n{context}"
    known = vocabulary(source)
    lowered = source.lower()
    found: list[Invented] = []
    rewritten = _unwrap(rewritten)
    for span in _quoted(rewritten):
        inner = span[1:-1].strip()
        if inner.lower() in lowered or not _is_title_or_sentence(inner):
            continue
        inner_words = [w for w in words(inner) if w not in STOPWORDS and w not in REQUEST_WORDS]
        new = known.missing(inner_words)
        if inner_words and 3 * len(new) >= len(set(inner_words)):
            found.append(Invented("quoted", span))
    if not _points_at_given_material(original):
        return found
    unquoted = _DOUBLE_QUOTED.sub(" ", rewritten)
    for name in dict.fromkeys(_names(unquoted)):
        if name.lower() not in lowered and not all(known.has(w) for w in words(name)):
            found.append(Invented("name", name))
    for number in dict.fromkeys(_numbers(unquoted)):
        if number not in source:
            found.append(Invented("number", number))
    return found


@lru_cache(maxsize=256)  # per prompt, for all the rewrites judged against it
def _unique_content_words(original: str) -> tuple[str, ...]:
    seen: set[str] = set()
    unique = []
    for word in content_words(original):
        key = stem(word)
        if key not in seen:
            seen.add(key)
            unique.append(word)
    return tuple(unique)


def dropped_content(original: str, rewritten: str) -> tuple[list[str], int]:
    """The content words of ``original`` that ``rewritten`` does not keep, and how many it has.

    Content words are the prompt's words other than function words and request words, compared
    by stem ("nutritious" keeps "nutrition"), each counted once.

    Example:
        >>> dropped_content("Rank the vegetables by how nutritious they are", "Rank fruits")
        (['vegetables', 'nutritious'], 3)
    """
    unique = _unique_content_words(original)
    if original in rewritten:
        return [], len(unique)
    kept = vocabulary(rewritten)
    return [w for w in unique if not kept.has(w)], len(unique)


def _sentence_counts(text: str) -> dict[str, tuple[int, str]]:
    """Each full sentence (three words or more, closed by ``.``, ``!`` or ``?``) by its words: how
    often, and its first wording."""
    counts: dict[str, tuple[int, str]] = {}
    for sentence in _SENTENCE.findall(text):
        key = " ".join(words(sentence))
        if key.count(" ") >= 2 and sentence.rstrip()[-1:] in ".!?":
            count, first = counts.get(key, (0, sentence.strip()))
            counts[key] = (count + 1, first)
    return counts


@lru_cache(maxsize=256)  # per prompt, for all the rewrites judged against it
def _prompt_sentences(
    original: str,
) -> tuple[dict[str, tuple[int, str]], tuple[frozenset[str], ...]]:
    closed = original.rstrip()
    before = _sentence_counts(closed if closed[-1:] in ".!?" else closed + ".")
    return before, tuple(frozenset(key.split()) for key in before)


def repeated_sentences(original: str, rewritten: str) -> list[str]:
    """The sentences of ``rewritten`` (three words or more, closed by ``.``, ``!`` or ``?``) that
    hold all the words of a sentence of ``original`` and that it says more than once, more often
    than ``original`` does: a small model's way of "rewriting" a prompt it cannot improve.

    Example:
        >>> repeated_sentences("Sum up the text.", "Sum up the text. Sum up the text!")
        ['Sum up the text.']
        >>> repeated_sentences("Say hi twice. Say hi twice.", "Say hi twice. Say hi twice.")
        []
        >>> repeated_sentences("Q", "Q Explain it well. Explain it well.")  # not the prompt's
        []
    """
    before, prompt_sentences = _prompt_sentences(original)
    return [
        first
        for key, (count, first) in _sentence_counts(rewritten).items()
        if count > max(1, before.get(key, (0, ""))[0])
        and any(words_ <= set(key.split()) for words_ in prompt_sentences)
    ]
