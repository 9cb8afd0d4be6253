"""Words as the content guards compare them: lower-cased, stemmed, function words set apart.

A rewrite may swap a request word ("explain" for "describe", "provide" for "give") or add generic
ones ("detailed", "comprehensive") freely; what it must keep, and must not make up, are the other
words. The lists here are plain English function words and the vocabulary of requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_WORD = re.compile(r"([^\W\d_]+)(?:['’][^\W\d_]+)*")


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _word_set(
    """a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing
    don down during each either else etc even ever every few for from further had hadn has hasn
    have haven having he her here hers herself him himself his how however i if in into is isn it
    its itself just least less let like ll may me might mine more most much must mustn my myself
    neither no nor not now of off on once one only onto or other others otherwise our ours
    ourselves out over own per rather re same shall shan she should shouldn since so some such
    than that the their theirs them themselves then there these they this those though through
    thus to too toward towards under until up upon us ve very via was wasn we were weren what
    whatever when whenever where whereas wherever whether which while who whoever whole whom
    whose why will with within without won would wouldn yet you your yours yourself yourselves
    hello hi hey ok okay yes
    s t d m o y"""
)
"""English function words: never content, never a name."""

REQUEST_WORDS = _word_set(
    """accurate additional additionally ai answer answers appropriate aspect aspects assist
    attention based basic best better brief briefly certain clarify clear clearly complete
    comprehensive concise concisely consider considering context correct create creating
    describe describing description detail detailed details discuss effective engaging ensure
    essential example examples explain explaining explanation explanations explore factors
    finally first focus following format generate get give given good help helpful highlight
    identify ideally important include includes including information informative insight
    insights instance instruction instructions key know list main make mention need needs
    note offer outline overall please possible potential practical precise prompt provide
    provided providing question questions readers relevant request required respond response
    responses sentence sentences share show simple specific specifically specify step steps
    suggest suggestions summarize sure take task tell text thank thanks thorough tips try
    understand understanding use used useful user using various want way ways well write
    writing"""
)
"""Words of the request itself, which a rewrite may add, drop or swap."""

GENERIC_NAMES = _word_set(
    """celsius fahrenheit kelvin english french spanish german italian portuguese russian chinese
    japanese korean arabic hindi latin markdown json yaml csv html xml latex ascii unicode utf iso
    apa mla ieee monday tuesday wednesday thursday friday saturday sunday january february march
    april june july august september october november december"""
)
"""Capitalized words that ask for a form (a language, a unit, a format, a date), not a fact."""

_SUFFIXES = (
    "ational",
    "ization",
    "ations",
    "ation",
    "ments",
    "ment",
    "ness",
    "ings",
    "ing",
    "ities",
    "ity",
    "ies",
    "ied",
    "es",
    "ed",
    "ly",
    "s",
)
_PREFIX = 6
_MIN_PREFIX = 4


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, possessives and contractions cut at the apostrophe.

    Example:
        >>> words("John's 3 cats don't sleep.")
        ['john', 'cats', 'don', 'sleep']
    """
    return list(_words(text))


@lru_cache(maxsize=1024)
def _words(text: str) -> tuple[str, ...]:
    # each guard reads the words of the same two texts: they are found once
    if text.isascii():  # lower-casing ASCII keeps every letter a letter: the same words
        return tuple(_WORD.findall(text.lower()))
    return tuple(w.lower() for w in _WORD.findall(text))


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem: common suffixes off, at most six letters kept.

    Example:
        >>> stem("classification"), stem("classify"), stem("nutritious"), stem("nutritional")
        ('classi', 'classi', 'nutrit', 'nutrit')
    """
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:_PREFIX]


def content_words(text: str) -> list[str]:
    """The words of ``text`` that are neither function words nor request words, in order.

    Example:
        >>> content_words("Please explain the causes of World War I in detail.")
        ['causes', 'world', 'war']
    """
    return [w for w in words(text) if len(w) > 1 and w not in STOPWORDS and w not in REQUEST_WORDS]


class Vocabulary:
    """The stems of a text, to ask whether a word (in any inflection) occurs in it.

    Two stems match when one is a prefix of the other and the shorter has at least four letters
    ("writ" and "write"); shorter stems must be equal. :func:`vocabulary` gives the one of a
    text, made once.

    Example:
        >>> vocabulary = Vocabulary("Rank the vegetables by nutrition")
        >>> [vocabulary.has(w) for w in ("vegetable", "nutritious", "fruit")]
        [True, True, False]
    """

    __slots__ = ("_prefixes", "_stems")

    def __init__(self, *texts: str) -> None:
        stems = {stem(word) for text in texts for word in set(_words(text))}
        self._stems = frozenset(stems)
        self._prefixes = frozenset({s[:i] for s in stems for i in range(_MIN_PREFIX, len(s) + 1)})

    def has(self, word: str) -> bool:
        s = stem(word)
        if s in self._stems:
            return True
        if len(s) < _MIN_PREFIX:
            return False
        return s in self._prefixes or any(s[:i] in self._stems for i in range(_MIN_PREFIX, len(s)))

    def missing(self, candidates: Iterable[str]) -> list[str]:
        """The ``candidates`` (deduplicated by stem, in order) that do not occur."""
        seen: set[str] = set()
        out = []
        for word in candidates:
            s = stem(word)
            if s in seen:
                continue
            seen.add(s)
            if not self.has(word):
                out.append(word)
        return out


@lru_cache(maxsize=256)
def vocabulary(text: str) -> Vocabulary:
    """The :class:`Vocabulary` of ``text``, made once (the guards ask it of the same texts)."""
    return Vocabulary(text)
