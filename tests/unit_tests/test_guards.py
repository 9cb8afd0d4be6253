import pytest

from bpo_integrations.guards import Guards, missing_protected, protected_spans


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
