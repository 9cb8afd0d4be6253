"""Property-based tests (hypothesis) of post-processing, the guards and the optimizer's fallback.

The invariants: cleaning and checking never raise on any text; an identity rewrite always keeps
every protected span; a rewrite that passes the guards contains every protected span of the
original; and through the optimizer, a non-empty prompt never yields an empty text, whatever the
backend answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bpo_integrations import BPOOptimizer, Generation, GenerationSettings
from bpo_integrations.backends import Backend
from bpo_integrations.guards import Guards, missing_protected, protected_spans
from bpo_integrations.postprocess import clean_completion
from bpo_integrations.settings import AGGRESSIVE_CUT_MARKERS, FinishReason
from bpo_integrations.template import BPO_INSTRUCTION, format_bpo_prompt

# Pieces a prompt is made of: plain words and every protected kind, plus the template's and the
# model's debris, so that random joins make spans touch, nest and overlap.
WORDS = st.sampled_from(
    [
        "Explain",
        "the",
        "sort",
        "list",
        "in",
        "Python",
        "don't",
        "it's",
        "why?",
        "please",
        "é",
        "中文",
    ]
)
PROTECTED = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(0, 1000, allow_nan=False).map(lambda x: f"{x:.2f}"),
    st.sampled_from(["50%", "3/4", "10:30", "1,000", "v2.1"]),
    st.sampled_from(["https://x.org/a?b=1", "http://ex.com/p.", "www.test.io/x)", "ftp://h/f"]),
    st.sampled_from(["bo@ex.com", "a.b+c@mail.co.uk"]),
    st.sampled_from(["`foo()`", "`x = 1`", "```python\nprint(1)\n```", "~~~\ncode  here\n~~~"]),
    st.sampled_from(["{name}", "{{user.id}}", "{file-path}"]),
    st.sampled_from(['"hi there"', "'ok now'", "“curly”", "«guillemets»", '"a `b` c"']),
)
DEBRIS = st.sampled_from(
    ["Optimized prompt:", "[/INST]", "[INST]", "</s>", "<s>", "<|im_end|>", "[PROTECT]", "**"]
)
SEPARATORS = st.sampled_from([" ", "", "\n", ", ", ". ", "\t", '"', "'", "`", "{", "}"])
PIECE = st.one_of(WORDS, PROTECTED, DEBRIS)


@st.composite
def prompts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(PIECE, min_size=1, max_size=12))
    seps = draw(st.lists(SEPARATORS, min_size=len(pieces), max_size=len(pieces)))
    return "".join(p + s for p, s in zip(pieces, seps, strict=True))


ANY_TEXT = st.one_of(st.text(max_size=300), prompts())


def kept(kind: str, span: str, rewrite: str) -> bool:
    """Whether ``rewrite`` keeps ``span`` in a form the guards document as equivalent."""
    if span in rewrite:
        return True
    if kind == "fenced_code":
        return " ".join(span.split()) in " ".join(rewrite.split())
    if kind in ("quoted", "single_quoted"):  # the quote style may change
        return span[1:-1] in rewrite
    return False


@given(ANY_TEXT, st.lists(st.sampled_from([*AGGRESSIVE_CUT_MARKERS, "###", ""]), max_size=3))
@example(format_bpo_prompt("Why?") + " Optimized prompt: Why is it so?</s>", [])
@example(BPO_INSTRUCTION, [])
def test_clean_completion_never_raises_and_strips_the_template(
    text: str, markers: list[str]
) -> None:
    cleaned = clean_completion(text, cut_markers=markers)
    assert isinstance(cleaned, str)
    assert cleaned == cleaned.strip()
    assert "[/INST]" not in cleaned
    assert not any(m and m in cleaned for m in markers)


@given(ANY_TEXT)
@example('"a `b` c"')
def test_every_protected_span_is_a_substring_of_the_text(text: str) -> None:
    for kind, span in protected_spans(text):
        assert span in text, (kind, span)
        assert span.strip(), (kind, span)


@given(ANY_TEXT)
def test_an_identity_rewrite_keeps_everything(text: str) -> None:
    assert missing_protected(text, text) == []
    if text.strip():
        assert Guards().check(text, text) is None


@given(ANY_TEXT, ANY_TEXT, st.sampled_from(["eos_token", "stop_sequence", "length", "unknown"]))
def test_guards_never_raise_and_reasons_are_named(
    original: str, rewrite: str, finish: FinishReason | Literal["unknown"]
) -> None:
    reason = Guards().check(original, rewrite, finish_reason=finish)
    assert reason is None or reason.reason in (
        "empty_output",
        "runaway_output",
        "lost_protected_content",
        "answered_instead",
        "invented_content",
        "changed_intent",
        "repeated_text",
    )


@st.composite
def rewrites(draw: st.DrawFn) -> tuple[str, str]:
    """An original prompt and a rewrite that keeps, drops, reorders or adds some of its pieces."""
    pieces = draw(st.lists(PIECE, min_size=1, max_size=10))
    seps = draw(st.lists(SEPARATORS, min_size=len(pieces), max_size=len(pieces)))
    original = "".join(p + s for p, s in zip(pieces, seps, strict=True))
    kept_pieces = draw(st.lists(st.sampled_from(pieces), max_size=len(pieces) + 2))
    extra = draw(st.lists(PIECE, max_size=4))
    glue = draw(st.sampled_from([" ", "\n", ""]))
    rewrite = glue.join(draw(st.permutations(kept_pieces + extra)))
    return original, rewrite


@given(rewrites())
@example(("Run `a  b` now", "Run `a b` now"))
@example(('Say "hi there" twice', "Say 'hi there' twice"))
def test_a_rewrite_that_passes_the_guards_keeps_every_protected_span(
    pair: tuple[str, str],
) -> None:
    original, rewrite = pair
    if Guards().check(original, rewrite) is not None:
        return
    for kind, span in protected_spans(original):
        assert kept(kind, span, rewrite), (kind, span, rewrite)


class ScriptedBackend(Backend):
    """Answers the given completions in turn (one per prompt per call), whatever they are."""

    name = "scripted"

    def __init__(self, completions: Sequence[Generation]) -> None:
        self.completions = list(completions)
        self.calls = 0

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        out = []
        for _ in prompts:
            out.append(self.completions[self.calls % len(self.completions)])
            self.calls += 1
        return out


GENERATIONS = st.builds(
    Generation,
    text=st.one_of(ANY_TEXT, st.just(""), st.just("   "), st.just("more " * 3000)),
    finish_reason=st.sampled_from(["eos_token", "stop_sequence", "length", "unknown"]),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(st.text(min_size=1, max_size=200), prompts()),
    st.lists(GENERATIONS, min_size=1, max_size=3),
    st.integers(1, 3),
    st.sampled_from(["stable", "aggressive", "greedy"]),
)
def test_the_optimizer_never_returns_an_empty_text_for_a_non_empty_prompt(
    prompt: str, completions: list[Generation], iterations: int, mode: str
) -> None:
    backend = ScriptedBackend(completions)
    optimizer = BPOOptimizer(backend, iterations=iterations, mode=mode, cache_size=0)  # type: ignore[arg-type]
    result = optimizer.optimize(prompt)
    assert result.text != ""
    assert result.original == prompt
    if result.fell_back:
        assert result.optimized == prompt
        assert result.fallback_reason
    else:
        assert result.optimized.strip()
        assert Guards().check(prompt, result.optimized) is None
        for kind, span in protected_spans(prompt):
            assert kept(kind, span, result.optimized), (kind, span)
        assert list(result.rounds)[-1] == result.optimized
