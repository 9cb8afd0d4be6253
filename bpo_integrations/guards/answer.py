"""The answer check: a rewrite of a request must still be a request, not the answer to it.

A chat model asked to improve a prompt sometimes answers it instead ("Sure! Here are five tips:
..."), the more so when the optimizer is served behind a chat template it was not trained with.
Sent on, such an answer makes the answering model respond to a response.
"""

from __future__ import annotations

import re
from functools import lru_cache

from bpo_integrations.guards.words import _word_set, content_words, vocabulary, words

IMPERATIVES = _word_set(
    """act analyse analyze annotate answer arrange ask assess brainstorm build calculate
    categorise categorize cite classify compare compile complete compose compute construct
    continue convert correct craft create critique debug define demonstrate derive describe
    design detail determine develop devise discuss draft edit elaborate enumerate estimate
    evaluate examine explain extract fill find fix formulate forward generate give guess help
    identify illustrate imagine implement improve indicate infer interpret invent label list
    name offer outline paraphrase pick plan predict prepare pretend produce proofread propose
    provide rank rate rearrange recommend refactor reformulate rephrase reply respond restate
    retell review revise rewrite roleplay select send simplify solve sort specify suggest
    summarise summarize tell transform translate verify write"""
)
"""Verbs that ask the assistant for something ("Write ...", "Summarize ..."); the advice an answer
gives ("Set goals", "Get enough sleep") uses other verbs."""

_REQUEST_PHRASE = re.compile(
    r"\b(?:please|can you|could you|would you|will you|i want|i need|i'd like|i would like|"
    r"i'm looking for|i am looking for|i wonder|help me|let me know|"
    r"(?:give|tell|show|teach|let) me|"
    r"you are an?|you're an?|your task|your goal|your job|in the role of|i'm trying|i am trying)\b",
    re.IGNORECASE,
)
_ANSWER_OPENING = re.compile(
    r"^\W*(?:sure|certainly|of course|absolutely|okay|ok|yes|no|great|hello|hi|hey|dear|"
    r"thank you|thanks|i'm sorry|i am sorry|sorry|unfortunately|as an ai|i'm an ai|"
    r"i am an ai|i'm a language model|i'd be happy|i would be happy|i'm happy to|i am happy to|"
    r"i'm glad|here (?:is|are)|here's|title\s*:|once upon a time|"
    r"the answer is|in conclusion|to [^,.\n]{1,80}, (?:you|it is|it's|there are|here))\b",
    re.IGNORECASE,
)
_ANSWER_LABEL = re.compile(
    r"(?:^|\n|(?<!\d)[.!?]\s)\W*((?:the )?(?:answer|output|result|response|solution|generated \w+|"
    r"story|poem|joke|summary|translation|rewritten \w+)\s*:)",
    re.IGNORECASE,
)
_MIN_ANSWER_WORDS = 3  # a word or two cannot be told from a terse rewrite
_CLAUSE = re.compile(r"[^.!?\n,;:]+")
_SENTENCE = re.compile(r"[^.!?\n]+")
_QUESTION_WORDS = _word_set(
    "who whom whose what when where why which how is are was were do does did can could would "
    "should will shall"
)
_LEAD = _word_set(
    "now also then first next finally and so just kindly briefly hello hi hey please ok okay"
)


def _opening(text: str, vocabulary: frozenset[str]) -> bool:
    """Whether ``text`` opens (after filler such as "now" or "please") with a word of
    ``vocabulary``."""
    tokens = words(text)
    while tokens and tokens[0] in _LEAD:
        tokens = tokens[1:]
    return bool(tokens) and tokens[0] in vocabulary


def _shares_content(original: str, rewritten: str) -> bool:
    """An answer speaks of what was asked; text that shares no content word with a prompt that
    has some is drift or noise (``changed_intent``'s business), not an answer."""
    content = content_words(original)
    kept = vocabulary(rewritten)
    return not content or any(kept.has(w) for w in content)


def is_request(text: str) -> bool:
    """Whether ``text`` asks or instructs: a question, an imperative sentence, a request phrase.

    Example:
        >>> is_request("Give three tips for sleeping well."), is_request("Sleep eight hours.")
        (True, False)
    """
    if "?" in text or _REQUEST_PHRASE.search(text):
        return True
    if any(_opening(clause, IMPERATIVES) for clause in _CLAUSE.findall(text)):
        return True
    # a question word opens a question at the start of a sentence ("..., which is" does not;
    # "Here's a guide on how to" does not)
    return any(_opening(sentence, _QUESTION_WORDS) for sentence in _SENTENCE.findall(text))


@lru_cache(maxsize=256)  # per prompt, for all the rewrites judged against it
def _prompt_kind(original: str) -> tuple[bool, bool]:
    """Whether ``original`` asks (its own "..., what colleges should I apply to" asks, too), and
    whether it opens as an answer does."""
    clauses = _CLAUSE.findall(original)
    asks = is_request(original) or any(_opening(c, _QUESTION_WORDS) for c in clauses)
    return asks, bool(_ANSWER_OPENING.match(original))


def answers_instead(original: str, rewritten: str) -> str | None:
    """Why ``rewritten`` reads as a response to ``original`` rather than a rewrite of it; ``None``
    when it does not.

    The check applies only to an original that is itself a request (a statement may be
    rewritten as a statement): the rewrite fails when it opens as an answer does ("Sure", "Here
    are", "I'm sorry") and the original does not, when a line of it starts the answer ("Answer:",
    "Story:", "Generated word:"), or when it neither asks nor instructs while it speaks of what
    the original asks about (three words or more, a content word in common).

    Example:
        >>> answers_instead("Give three tips for sleeping well.", "Sure! 1. Sleep eight hours.")
        'opens as an answer'
        >>> answers_instead("How do I sleep well?", "Sleep eight hours and avoid coffee.")
        'neither asks nor instructs'
        >>> answers_instead("Name a word that rhymes with cat.", "Name a rhyme. Answer: hat")
        "starts answering ('Answer:')"
        >>> answers_instead("How do I sleep well?", "What habits help me sleep well at night?")
    """
    asks, opens_as_answer = _prompt_kind(original)
    if not asks:
        return None
    if _ANSWER_OPENING.match(rewritten) and not opens_as_answer:
        return "opens as an answer"
    label = _ANSWER_LABEL.search(rewritten)
    if label and label.group(1).lower() not in original.lower():
        return f"starts answering ({label.group(1)!r})"
    if (
        len(words(rewritten)) >= _MIN_ANSWER_WORDS
        and not is_request(rewritten)
        and _shares_content(original, rewritten)
    ):
        return "neither asks nor instructs"
    return None
