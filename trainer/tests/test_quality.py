"""bpo_trainer.quality on the real BPO records: scores, context and protected-content checks."""

from __future__ import annotations

import pytest
from bpo_trainer.quality import (
    DevRecord,
    copy_outputs,
    corpus_scores,
    lost_context,
    lost_protected,
    optimizer_outputs,
    quality_table,
    score_system,
)
from sacrebleu.metrics import BLEU, CHRF

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def records(bpo_val_records: list[dict]) -> list[DevRecord]:
    return [DevRecord.from_record(i, r) for i, r in enumerate(bpo_val_records)]


def test_corpus_scores_are_sacrebleu_corpus_scores(records: list[DevRecord]) -> None:
    outputs = copy_outputs(records[:50])
    references = [r.reference for r in records[:50]]
    chrf, bleu = corpus_scores(outputs, references)
    assert chrf == round(CHRF().corpus_score(outputs, [references]).score, 2)
    assert bleu == round(BLEU().corpus_score(outputs, [references]).score, 2)
    assert 20 < chrf < 100 and 0 < bleu < 100  # a rewrite shares much, not all, with its prompt
    with pytest.raises(ValueError, match="2 outputs for 1 references"):
        corpus_scores(["a", "b"], ["a"])


def test_lost_context_counts_outputs_without_the_context(records: list[DevRecord]) -> None:
    with_context = [r for r in records if r.context]
    assert len(with_context) == 44
    # the references keep the context (collapsed whitespace) in nearly every record
    kept_by_reference = sum(not lost_context(r, r.reference) for r in with_context)
    assert kept_by_reference >= 40
    # the instruction alone has lost it, every time
    assert all(lost_context(r, r.instruction) for r in with_context)
    assert not any(lost_context(r, "anything") for r in records if not r.context)
    score = score_system("instruction only", records, [r.instruction for r in records])
    assert score.lost_context == 44


def test_lost_protected_finds_dropped_numbers_and_code(records: list[DevRecord]) -> None:
    record = DevRecord(0, "Convert 37 C to `fahrenheit()`", "", "", "Convert 37 °C.")
    assert lost_protected(record, "Convert 37 C to `fahrenheit()` please") == []
    assert [kind for kind, _ in lost_protected(record, "Convert it to Fahrenheit.")] == [
        "number",
        "inline_code",
    ]
    copy = score_system("copy", records, copy_outputs(records))
    assert (copy.lost_protected, copy.lost_context, copy.unchanged) == (0, 0, len(records))


def test_optimizer_outputs_rewrite_only_the_instruction_and_keep_the_context(
    records: list[DevRecord],
) -> None:
    seen: list[str] = []

    def rewrite(prompt: str) -> str:
        seen.append(prompt)
        return f"{prompt} Answer step by step."

    chosen = [r for r in records if r.context][:3] + [r for r in records if not r.context][:3]
    optimizer = BPOOptimizer(CallableBackend(rewrite), cache_size=0)
    outputs, results = optimizer_outputs(optimizer, chosen)
    assert sorted(seen) == sorted(r.instruction if r.context else r.prompt for r in chosen)
    for record, output in zip(chosen, outputs, strict=True):
        expected = record.instruction if record.context else record.prompt
        assert output.startswith(f"{expected} Answer step by step.")
        assert not lost_context(record, output)
    assert not any(result.fell_back for result in results)
    score = score_system("(d)", chosen, outputs, results=results)
    assert score.fell_back == 0 and score.lost_context == 0


def test_fallbacks_are_counted_by_reason(records: list[DevRecord]) -> None:
    chosen = records[:4]
    optimizer = BPOOptimizer(CallableBackend(lambda p: ""), cache_size=0)
    outputs, results = optimizer_outputs(optimizer, chosen)
    assert outputs == [r.prompt for r in chosen]  # kept the originals
    score = score_system("empty", chosen, outputs, results=results)
    assert score.fell_back == 4 and score.fallback_reasons == {"empty_output": 4}
    assert "| empty |" in quality_table([score]) and "empty_output 4" in quality_table([score])
