import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpo_integrations.guards import PROTECTED_PATTERNS, Guards, missing_protected, protected_spans


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
    assert (Guards().check(original, rewrite) or "").startswith(reason)


def test_truncated_generation_is_runaway() -> None:
    assert Guards().check("hi", "hello there", finish_reason="length").startswith("runaway_output")
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
        assert Guards().check(original, rewrite) is None


def test_the_shortcut_does_not_hide_a_lost_span() -> None:
    original = "Give 3 tips for `git rebase`"
    assert Guards().check(original, original + " Be brief.") is None
    reason = Guards().check(original, "Give 3 tips for rebasing a branch with git.")
    assert reason is not None and reason.startswith("lost_protected_content")
    assert "`git rebase`" in reason
