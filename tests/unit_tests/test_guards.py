import doctest
import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpo_integrations.guards import (
    DEFAULT_MODEL_GUARDS,
    NO_GUARDS,
    PROTECTED_PATTERNS,
    GuardFailure,
    Guards,
    Invented,
    answers_instead,
    dropped_content,
    invented_content,
    is_request,
    missing_protected,
    protected_spans,
    repeated_sentences,
)
from bpo_integrations.result import FallbackReason


def kinds(text: str) -> list[str]:
    return [kind for kind, _ in protected_spans(text)]


def test_protected_spans_of_each_kind() -> None:
    text = (
        'Fix `foo()` in {file}, see https://x.org/a?b=1, mail bo@ex.com, say "hi there" '
        "and 'ok now', 42 times:\n```python\nprint(1)\n```"
    )
    spans = dict((span, kind) for kind, span in protected_spans(text))
    assert spans["`foo()`"] == "inline_code"
    assert spans["{file}"] == "placeholder"
    assert spans["https://x.org/a?b=1"] == "url"
    assert spans["bo@ex.com"] == "email"
    assert spans['"hi there"'] == "quoted"
    assert spans["'ok now'"] == "single_quoted"
    assert spans["42"] == "number"
    assert spans["```python\nprint(1)\n```"] == "fenced_code"
    assert "1" not in spans  # the number inside the code block is not listed again


def test_apostrophes_are_not_quotes() -> None:
    assert kinds("I don't know why it's late, isn't it?") == []


def test_rewrite_that_keeps_everything_passes() -> None:
    original = 'Translate "bonjour" and add 3 examples from https://a.b/c.'
    rewrite = 'Please translate "bonjour" into English, with 3 examples citing https://a.b/c.'
    assert Guards().check(original, rewrite) is None


@pytest.mark.parametrize(
    ("original", "rewrite", "reason"),
    [
        ("Tell me a joke", "   ", "empty_output"),
        ("Tell me a joke", "x" * 5000, "runaway_output"),
        ("Give me 3 ideas", "Give me three ideas", "lost_protected_content"),
        ("Fix `a+b`", "Fix the sum", "lost_protected_content"),
        ("Write to {name}", "Write to the person", "lost_protected_content"),
    ],
)
def test_rejections_name_the_reason(original: str, rewrite: str, reason: str) -> None:
    failure = Guards().check(original, rewrite)
    assert failure is not None and failure.reason == reason


def test_truncated_generation_is_runaway() -> None:
    truncated = Guards().check("hi", "hello there", finish_reason="length")
    assert truncated is not None and truncated.reason is FallbackReason.RUNAWAY_OUTPUT
    assert Guards(reject_truncated=False).check("hi", "hello there", finish_reason="length") is None


def test_code_blocks_compare_with_whitespace_collapsed() -> None:
    original = "Explain:\n```\nfor i in x:\n    print(i)\n```"
    rewrite = "Explain this loop step by step:\n```\nfor i in x:\n  print(i)\n```"
    assert missing_protected(original, rewrite) == []


# -- the fast paths agree with the full scan --------------------------------------------------

PIECES = st.one_of(
    st.sampled_from(["Explain", "the", "list", "don't", "why?", "é", "中文", "3", "-4.5", "50%"]),
    st.sampled_from(["https://x.org/a?b=1", "www.test.io/x)", "bo@ex.com", "{name}", "{{u.id}}"]),
    st.sampled_from(["`foo()`", "```py\nprint(1)\n```", '"hi there"', "'ok now'", "“curly”"]),
    st.sampled_from([" ", "", "\n", ", ", '"', "'", "`", "{", "}", "."]),
)
TEXTS = st.one_of(st.lists(PIECES, max_size=14).map("".join), st.text(max_size=80))


PROTECTED_ONLY = Guards(
    reject_answers=False, reject_invented=False, min_kept_content=0, reject_repeats=False
)
"""The length and protected-content rules alone (what added text cannot break)."""


def reference_spans(text: str) -> list[tuple[str, str]]:
    """``protected_spans`` as first written: every pattern cut out, matches or not."""
    spans: list[tuple[str, str]] = []
    remaining = text
    for kind, pattern in PROTECTED_PATTERNS.items():
        found = [m.group(0) for m in pattern.finditer(remaining)]
        if kind == "url":
            found = [s.rstrip(".,;:!?") for s in found]
        if kind == "quoted" or kind == "single_quoted":
            found = [s for s in found if s[1:-1].strip()]
        spans.extend((kind, s) for s in found if s in text)
        remaining = pattern.sub(" ", remaining)
    order = {span: text.find(span) for _, span in spans}
    return sorted(spans, key=lambda item: order[item[1]])


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_protected_spans_match_the_full_scan(text: str) -> None:
    assert protected_spans(text) == reference_spans(text)


@settings(max_examples=300, deadline=None)
@given(TEXTS, TEXTS, TEXTS)
def test_a_rewrite_that_contains_the_original_keeps_every_span(
    original: str, before: str, after: str
) -> None:
    rewrite = before + original + after
    spans = protected_spans(original)
    assert all(span in original for _, span in spans)  # why the shortcut is exact
    assert missing_protected(original, rewrite) == []
    if rewrite.strip() and len(rewrite) <= 8 * len(original) + 1200:
        assert PROTECTED_ONLY.check(original, rewrite) is None


def test_the_shortcut_does_not_hide_a_lost_span() -> None:
    original = "Give 3 tips for `git rebase`"
    assert Guards().check(original, original + " Be brief.") is None
    reason = Guards().check(original, "Give 3 tips for rebasing a branch with git.")
    assert reason is not None and reason.reason is FallbackReason.LOST_PROTECTED_CONTENT
    assert "`git rebase`" in reason.detail


# -- content guards: invented specifics, answers, changed intent, repeats ------------------------


@pytest.mark.parametrize(
    ("original", "rewrite"),
    [
        # a quoted title or sentence the prompt never had
        ("Complete the lyrics of the following song", 'Complete the lyrics of "The Nightingale".'),
        (
            "Identify which emotion the person is feeling in the given sentence.",
            'Identify the emotion in the sentence. Sentence: "I am feeling happy today."',
        ),
        # where the prompt points at its material, a new name or number is made up
        ("Summarize this article.", "Summarize the article by John Smith in the Times."),
        ("Convert the following temperatures.", "Convert the 3 following temperatures."),
    ],
)
def test_invented_specifics_are_rejected(original: str, rewrite: str) -> None:
    failure = Guards().check(original, rewrite)
    assert failure is not None and failure.reason is FallbackReason.INVENTED_CONTENT, rewrite


@pytest.mark.parametrize(
    ("original", "rewrite", "context"),
    [
        # knowledge a good rewrite adds, where the prompt points at nothing it was given
        (
            "Tell me a quick summary of the book Brave new world",
            "Summarize Brave New World by Aldous Huxley.",
            None,
        ),
        # labels, formats and list numbers are not invented specifics
        (
            "Convert the dates into ISO 8601 format",
            'Convert the dates to ISO 8601 ("YYYY-MM-DD").',
            None,
        ),
        (
            "Describe the following process.",
            "Describe the following process:\n1. Inputs\n2. Steps",
            None,
        ),
        # a name or a quote taken from the context is not made up
        (
            "Summarize the following article.",
            'Summarize what Jane Doe says about "open data".',
            "Jane Doe wrote about open data.",
        ),
        # request words are not names, wherever they stand
        (
            "Explain this painting.",
            "Explain this painting. Please Include the style. Ensure clarity.",
            None,
        ),
    ],
)
def test_specifics_with_a_source_are_kept(original: str, rewrite: str, context: str | None) -> None:
    assert Guards().check(original, rewrite, context=context) is None


def test_invented_content_names_what_was_made_up() -> None:
    found = invented_content(
        "Complete the lyrics of the following song",
        'Complete the lyrics of "The Nightingale" by the band Nightjar, all 3 verses.',
    )
    assert found == [
        Invented("quoted", '"The Nightingale"'),
        Invented("name", "Nightjar"),
        Invented("number", "3"),
    ]
    reason = Guards().check("Summarize this novel", 'Summarize "The Road" by Cormac McCarthy.')
    assert str(reason) == "invented_content: quoted '\"The Road\"', name 'Cormac', name 'McCarthy'"


@pytest.mark.parametrize(
    ("original", "rewrite", "why"),
    [
        (
            "Give two examples of good customer service.",
            "Sure! Here are two examples: a refund.",
            "opens as an answer",
        ),
        (
            "How do I improve my time management?",
            "I'm sorry, but I cannot help with that.",
            "opens as an answer",
        ),
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
            "neither asks nor instructs",
        ),
        (
            "How can I sleep better?",
            "To sleep better, keep a fixed bedtime and avoid coffee.",
            "neither asks nor instructs",
        ),
        (
            "Write a story where one character teaches another to fish.",
            "Write a story about fishing.\n\nStory: Tom took Anna to the lake at dawn.",
            "starts answering ('Story:')",
        ),
        (
            "Generate a word which can be an adjective and a verb.",
            'Generate a word that can be an adjective and a verb.\n\nGenerated word: "clean"',
            "starts answering ('Generated word:')",
        ),
        (
            "hello who are you",
            "Hello, I'm glad you're interested in the internet.",
            "neither asks nor instructs",
        ),
    ],
)
def test_answers_instead_of_rewrites_are_rejected(original: str, rewrite: str, why: str) -> None:
    assert answers_instead(original, rewrite) == why
    assert Guards().check(original, rewrite) == GuardFailure(FallbackReason.ANSWERED_INSTEAD, why)


@pytest.mark.parametrize(
    ("original", "rewrite"),
    [
        ("How can I sleep better?", "What habits help an adult sleep better?"),
        (
            "Based on the article, why is the report important?",
            "Based on the article, explain why the report matters.",
        ),
        ("Write a haiku about rain", "Write a haiku about rain that evokes a quiet morning."),
        ("Tell me about Rome", "I would like an overview of the history of Rome."),
        # a section the rewrite asks for is not an answer
        (
            "Design a profile page.",
            "Design a profile page with these sections: 1. Photo 2. Summary: a short bio.",
        ),
        # a statement may be rewritten as a statement: nothing to judge
        ("I'm bored.", "I'm bored and looking for something to do at home."),
    ],
)
def test_requests_stay_requests(original: str, rewrite: str) -> None:
    assert answers_instead(original, rewrite) is None
    assert is_request(rewrite) or not is_request(original)


def test_changed_intent_counts_content_words_by_stem() -> None:
    original = "Rank these vegetables from least to most nutritious: potatoes, carrots, kale."
    assert (
        Guards().check(original, "Rank the vegetable list by nutrition: potato, carrot, kale.")
        is None
    )
    assert dropped_content(original, "Describe a healthy breakfast.") == (
        ["rank", "vegetables", "nutritious", "potatoes", "carrots", "kale"],
        6,
    )
    reason = Guards().check(original, "Describe a healthy breakfast with kale.")
    assert str(reason) == (
        "changed_intent: kept 1 of 6 content words, dropped 'rank', 'vegetables', 'nutritious', "
        "'potatoes', 'carrots'"
    )
    # request words may change freely; prompts with under three content words are not judged
    assert Guards().check("Please explain gravity in detail.", "Describe gravity.") is None
    assert Guards().check("Tell me about Rome", "Describe Paris.") is None
    assert (
        Guards(min_kept_content=0).check(original, "Describe a healthy breakfast with kale.")
        is None
    )


def test_a_repeated_sentence_keeps_the_prompt() -> None:
    original = "Summarize the given article in 1-2 sentences."
    reason = Guards().check(original, f"{original} {original}")
    assert str(reason) == "repeated_text: 'Summarize the given article in 1-2 sentences.'"
    assert (
        repeated_sentences("Say it. Say it twice. Say it twice.", "Say it twice. Say it twice.")
        == []
    )
    assert Guards(reject_repeats=False).check(original, f"{original} {original}") is None


def test_the_keep_rule_sends_a_mere_rewording_of_the_prompt_on_as_it_is() -> None:
    original = "How do I learn to play the guitar quickly?"
    reworded = "What is the fastest way for me to learn to play the guitar?"
    expanded = (
        f"{original} Suggest a weekly practice plan for a beginner, the first chords and songs "
        "to learn, and the mistakes to avoid."
    )
    assert Guards().check(original, reworded) is None  # the keep rule is off in Guards()
    reason = DEFAULT_MODEL_GUARDS.check(original, reworded)
    assert reason is not None and reason.reason is FallbackReason.NOT_IMPROVED
    assert str(reason) == "not_improved: 1.40 times the prompt's length, at most 1.7"
    assert DEFAULT_MODEL_GUARDS.check(original, expanded) is None
    # the other guards speak first: an answer is named as one, not as too short
    answer = DEFAULT_MODEL_GUARDS.check(original, "Sure! Practice daily.")
    assert answer is not None and answer.reason is FallbackReason.ANSWERED_INSTEAD
    assert Guards(min_length_ratio=1.2).check(original, reworded) is None
    assert not FallbackReason.NOT_IMPROVED.is_backend_failure


def test_the_optimizer_applies_the_keep_rule_to_the_shipped_model_only() -> None:
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import CallableBackend
    from bpo_integrations.backends.local import LocalBackend

    assert BPOOptimizer().guards == DEFAULT_MODEL_GUARDS  # lazy: no model is loaded here
    assert BPOOptimizer(LocalBackend()).guards == DEFAULT_MODEL_GUARDS
    assert BPOOptimizer(LocalBackend("THUDM/BPO")).guards == Guards()
    assert BPOOptimizer(LocalBackend(adapter="my-adapter")).guards == Guards()
    optimizer = BPOOptimizer(CallableBackend(lambda p: "Tell me how to learn guitar fast?"))
    result = optimizer.optimize("How do I learn to play the guitar quickly?")
    assert optimizer.guards == Guards() and not result.fell_back
    kept = BPOOptimizer(optimizer.backend, guards=DEFAULT_MODEL_GUARDS).optimize(
        "How do I learn to play the guitar quickly?"
    )
    assert kept.fell_back and kept.fallback_reason is FallbackReason.NOT_IMPROVED
    assert kept.text == "How do I learn to play the guitar quickly?"


def test_no_guards_turns_every_check_off() -> None:
    for rewrite in ("Sure! Paris.", 'Summarize "The Road".', "Describe a cat. Describe a cat."):
        assert NO_GUARDS.check("Summarize this long article about dogs", rewrite) is None


@pytest.mark.parametrize("module", ["", ".answer", ".content", ".protected", ".words"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module("bpo_integrations.guards" + module))
    assert result.attempted > 0 and result.failed == 0
