"""bpo_trainer.guard_report on the real BPO files and the saved rewrites of the default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpo_trainer import guard_report
from bpo_trainer.guard_quality import best_threshold, bootstrap, choose, keep_rule_sweep
from bpo_trainer.guard_report import (
    Output,
    dev_quality,
    generate_outputs,
    guard_table,
    judge,
    read_outputs,
)
from bpo_trainer.prompt_sets import PromptRecord, dev_indices, load_prompts, load_records
from bpo_trainer.quality import corpus_scores

from bpo_integrations.guards import DEFAULT_MODEL_GUARDS, Guards

pytestmark = pytest.mark.shared_data

FIXTURE = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "default_optimizer_outputs.jsonl"
)


@pytest.fixture(scope="module")
def records(shared_dir: Path) -> dict[tuple[str, int], PromptRecord]:
    return load_records(shared_dir)


def test_prompts_are_split_as_the_middleware_sees_them(shared_dir: Path) -> None:
    val = load_prompts(shared_dir, "val")
    raw = json.loads((shared_dir / "data" / "bpo" / "val.json").read_text(encoding="utf-8"))
    assert len(val) == len(raw) == 300
    with_context = [r for r in val if r.context]
    assert len(with_context) == 44
    for record in with_context:  # the instruction alone is rewritten; the context goes on after
        assert record.instruction == raw[record.index]["instruction"].strip()
        assert record.context == raw[record.index]["context"].strip()
    assert all(r.reference == raw[r.index]["optimized_prompt"].strip() for r in val)
    vicuna = load_prompts(shared_dir, "vicuna")
    assert len(vicuna) == 80 and vicuna[0].instruction.startswith("How can I improve my time")
    assert {len(load_prompts(shared_dir, n)) for n in ("dolly", "self_instruct")} == {200, 252}
    with pytest.raises(ValueError, match="unknown prompt set 'nope'"):
        load_prompts(shared_dir, "nope")


def test_the_dev_split_is_the_one_the_shipped_model_card_names() -> None:
    dev = dev_indices()
    assert len(dev) == len(set(dev)) == 30
    from bpo_integrations.models import default_adapter_path

    card = (default_adapter_path() / "README.md").read_text(encoding="utf-8")
    assert ", ".join(str(i) for i in dev) in card


def test_generate_resumes_without_rewriting_what_the_file_holds(
    records: dict[tuple[str, int], PromptRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outputs.jsonl"
    done = [records[("vicuna", i)] for i in range(3)]
    path.write_text(
        "".join(
            Output(r.set, r.index, "bpo", f"rewrite {r.index}", "eos_token").to_json() + "\n"
            for r in done
        ),
        encoding="utf-8",
    )

    def no_backend(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished file must not load the model")

    monkeypatch.setattr("bpo_integrations.backends.local.LocalBackend", no_backend)
    outputs = generate_outputs(done, path)
    assert [o.rewrite for o in outputs] == ["rewrite 0", "rewrite 1", "rewrite 2"]
    assert read_outputs(tmp_path / "absent.jsonl") == []


def test_the_fixture_holds_only_our_outputs_and_prompt_ids() -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    assert rows and all(
        set(row) == {"set", "index", "template", "rewrite", "finish_reason"} for row in rows
    )
    outputs = read_outputs(FIXTURE)
    dev = set(dev_indices())
    assert {o.index for o in outputs if o.set == "val" and o.template == "bpo"} >= dev
    assert {o.index for o in outputs if o.template == "chat"} >= dev


def test_choose_keeps_the_prompt_when_a_guard_rejects_and_always_keeps_the_context() -> None:
    record = PromptRecord("val", 0, "Summarize the following article", context="Cats sleep.")
    good = Output("val", 0, "bpo", "Summarize the following article in two sentences.", "eos_token")
    invented = Output("val", 0, "bpo", 'Summarize "The Road" by Cormac McCarthy.', "eos_token")
    assert choose(None, record, good) == ("Summarize the following article\nCats sleep.", None)
    assert choose(Guards(), record, good)[0] == good.rewrite + "\nCats sleep."
    text, reason = choose(Guards(), record, invented)
    assert text == "Summarize the following article\nCats sleep."
    assert reason is not None and reason.reason == "invented_content"


def test_bootstrap_intervals_hold_the_point_estimate_and_pair_the_records() -> None:
    references = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"] * 4
    copy = ["the cat sat", "a dog ran", "birds sing"] * 4
    better = ["the cat sat on the mat", "a dog ran in the park", "birds sing"] * 4
    intervals = bootstrap({"copy": copy, "better": better}, references, resamples=200)
    for name, outputs in (("copy", copy), ("better", better)):
        chrf, bleu = corpus_scores(outputs, references)
        low, high = intervals[name]["chrf_ci"]
        assert low <= chrf <= high
        low, high = intervals[name]["bleu_ci"]
        assert low <= bleu <= high
    low, high = intervals["better"]["chrf_vs_copy_ci"]
    assert 0 < low <= high  # better on every resample: the paired difference excludes zero
    assert "chrf_vs_copy_ci" not in intervals["copy"]


def test_report_on_the_saved_rewrites(records: dict[tuple[str, int], PromptRecord]) -> None:
    outputs = read_outputs(FIXTURE)
    dev = dev_indices()
    rows = judge(records, outputs, set(dev))
    by_guard = {row.guard: row for row in rows}
    everything = by_guard["all + the keep rule (BPOOptimizer()'s DEFAULT_MODEL_GUARDS)"]
    assert everything.counts["dev"][0] > by_guard["all (the default Guards())"].counts["dev"][0]
    for row in rows:
        assert row.counts["ChatGPT references"][1] == 300
        assert row.counts["dev"][1] == 30
        # all the guards together reject whatever one of them rejects
        for group, (rejected, _) in row.counts.items():
            assert rejected <= everything.counts[group][0]
    table = guard_table(rows)
    assert table.splitlines()[0].startswith("| guard | ")
    assert len(table.splitlines()) == 2 + len(rows)

    quality = dev_quality(records, outputs, dev, resamples=50)
    copy, default, guarded, kept = quality
    assert copy.rewritten == 0 and not copy.fallbacks
    assert guarded.rewritten <= default.rewritten
    assert sum(guarded.fallbacks.values()) == 30 - guarded.rewritten
    assert 15 <= kept.rewritten < guarded.rewritten and kept.fallbacks["not_improved"] > 0
    references = [records[("val", i)].reference_output for i in dev]
    texts = [records[("val", i)].instruction for i in dev]
    texts = [
        t + ("\n" + records[("val", i)].context if records[("val", i)].context else "")
        for t, i in zip(texts, dev, strict=True)
    ]
    assert (copy.chrf, copy.bleu) == corpus_scores(texts, references)


def test_main_report_prints_both_tables(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, card = tmp_path / "report.json", tmp_path / "README.md"
    card.write_text("# A model\n\nIts training.\n", encoding="utf-8")
    args = ["report", "--outputs", str(FIXTURE), "--shared_dir", str(shared_dir)]
    args += ["--resamples", "20", "--report_file", str(report), "--card", str(card)]
    assert guard_report.main(args) == 0
    assert guard_report.main(args) == 0  # a second run replaces the card's section
    printed = capsys.readouterr().out.split("\nthe dev table is in")[-2]
    written = card.read_text(encoding="utf-8")
    assert written.startswith("# A model\n\nIts training.\n")
    assert written.count("## Quality with the shipped guards and keep rule") == 1
    dev_table = printed.split("Quality on the dev split")[1].split("\n\n")[1]
    assert dev_table in written  # the card's table is the one this run printed
    assert "| invented_content |" in printed and "| copy the prompt |" in printed
    data = json.loads(report.read_text(encoding="utf-8"))
    assert {g["guard"] for g in data["guards"]} >= {"answered_instead", "changed_intent"}
    assert len(data["quality"]) == 4
    assert "| **1.7** |" in printed  # the shipped keep rule is the one the tuning records pick


def test_main_without_outputs_is_a_clear_error(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.jsonl"
    code = guard_report.main(["report", "--outputs", str(missing), "--shared_dir", str(shared_dir)])
    assert code == 2
    assert f"no rewrites in {missing}: run generate first" in capsys.readouterr().err


def test_the_keep_rule_is_tuned_on_the_training_records_only(
    records: dict[tuple[str, int], PromptRecord],
) -> None:
    """The shipped threshold is the one the sweep picks on the val.json records outside the dev
    split; with it, both metrics gain over the rule switched off there."""
    outputs = read_outputs(FIXTURE)
    dev = set(dev_indices())
    train = sorted({o.index for o in outputs if o.set == "val" and o.template == "bpo"} - dev)
    assert train and not dev & set(train)
    points = keep_rule_sweep(records, outputs, train)
    best = best_threshold(points)
    assert best.min_length_ratio == DEFAULT_MODEL_GUARDS.min_length_ratio
    off = points[0]
    assert off.min_length_ratio == 0 and off.rewritten > best.rewritten >= len(train) / 2
    assert best.bleu_gain > off.bleu_gain and best.chrf_gain >= off.chrf_gain
