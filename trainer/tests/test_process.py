"""Stage ``process`` on the REAL ChatGPT answers of the released BPO data (``val.json``)."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.process import (
    RANDOM_LAYOUTS,
    ProcessConfig,
    context_layouts,
    parse_answer,
    place_context,
    process_records,
    run_process,
)
from bpo_trainer.records import read_records
from rich.console import Console

_DERIVED = ("comparison", "optimized_prompt", "final_input", "final_output")


def _answer(record: dict[str, Any]) -> str:
    # ``comparison`` is everything before the marker (it keeps its trailing blank line), so the
    # real answer was: comparison + "Optimized Instruction:" + prompt + "[END]".
    return f"{record['comparison']}Optimized Instruction: {record['optimized_prompt']} [END]"


def _constructed(val: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `construct` writes for the val records: the feedback fields, an id and the answer."""
    return [
        {
            "id": f"val-{index}",
            **{key: value for key, value in record.items() if key not in _DERIVED},
            "response": _answer(record),
        }
        for index, record in enumerate(val)
    ]


def _reference_keeps(record: dict[str, Any]) -> bool:
    """The reference's filters, recomputed: it filters only records without a context field."""
    if "context" in record:
        return True
    before, after = len(record["instruction"].split()), len(record["optimized_prompt"].split())
    return (
        before / after <= 2
        and after / before <= 6
        and "[protected" not in record["optimized_prompt"].lower()
    )


def _derivable(record: dict[str, Any]) -> set[tuple[str, str]]:
    """Every pair a reference rule whose condition holds makes from the record's own prompt."""
    instruction, optimized = record["instruction"], record["optimized_prompt"].strip()
    context = record.get("context") or ""
    if not context:
        return {(instruction, optimized)}
    if context.lower() in optimized.lower():
        return {(f"{instruction}\n{context}".strip(), optimized)}
    return set(context_layouts(instruction, context, optimized).values())


@pytest.mark.shared_data
def test_process_reproduces_the_released_bpo_pairs(
    bpo_val_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    source = tmp_path / "constructed.jsonl"
    source.write_text(
        "".join(json.dumps(r) + "\n" for r in _constructed(bpo_val_records)), encoding="utf-8"
    )
    console = Console(file=io.StringIO(), width=160)
    report = run_process(
        ProcessConfig(input_file=str(source), output_file=str(tmp_path / "train.jsonl")),
        console=console,
    )
    kept = {r["id"]: r for r in read_records(report["output_file"])}
    expected = {f"val-{i}": r for i, r in enumerate(bpo_val_records)}

    # the same records survive as with the reference's filters (ratios 2 and 6, "[protected")
    assert set(kept) == {key for key, r in expected.items() if _reference_keeps(r)}
    assert report["input"] == 300
    assert report["dropped"] == 300 - len(kept) > 0
    assert set(report["dropped_by_reason"]) <= {"shrunk", "grown", "protected_marker"}
    assert json.loads(Path(report["report_file"]).read_text())["kept"] == len(kept)

    exact = in_layouts = whitespace = inconsistent = 0
    for key, out in kept.items():
        want = expected[key]
        assert out["comparison"] == want["comparison"]
        assert out["optimized_prompt"] == want["optimized_prompt"].strip()
        pair, wanted = (
            (out["final_input"], out["final_output"]),
            (
                want["final_input"],
                want["final_output"],
            ),
        )
        layouts = context_layouts(
            want["instruction"], want.get("context") or "", out["optimized_prompt"]
        )
        if pair == wanted:
            exact += 1
        elif wanted in layouts.values() and pair in layouts.values():
            in_layouts += 1  # another draw of the reference's random context layout
        elif tuple(s.strip() for s in wanted) == pair:
            whitespace += 1  # the released prompt kept a trailing space the reference strips
        else:
            # the released pair is not derivable from its own optimized prompt by any rule
            assert wanted not in _derivable(want), (key, pair, wanted)
            inconsistent += 1
    agreement = exact + in_layouts
    print(
        f"\nprocess vs released val.json: {len(kept)} kept, {exact} exact, {in_layouts} other "
        f"random layout, {whitespace} trailing-space only, {inconsistent} not derivable"
    )
    assert agreement >= len(kept) - 6
    assert whitespace <= 4 and inconsistent <= 2
    assert "Processed 300 answers" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.shared_data
def test_deterministic_layouts_match_exactly(bpo_val_records: list[dict[str, Any]]) -> None:
    records = [r for r in _constructed(bpo_val_records) if r.get("context")]
    kept, report = process_records(records, ProcessConfig())
    layouts = report["context_layouts"]
    assert layouts.get("context_in_optimized", 0) > 0
    forced_count = layouts.get("instruction\\ncontext (forced)", 0)
    assert forced_count > 0
    checked = 0
    by_id = {r["id"]: r for r in kept}
    for index, record in enumerate(bpo_val_records):
        out = by_id.get(f"val-{index}")
        if out is None:
            continue
        optimized = record["optimized_prompt"].strip()
        forced = (
            "follow" in optimized
            or "follow" in record["instruction"]
            or record["instruction"].endswith(":")
        )
        if forced and record["context"].lower() not in optimized.lower():
            assert out["final_input"] == record["final_input"]
            assert out["final_output"] == record["final_output"].strip()
            checked += 1
    assert checked == forced_count


def test_random_layouts_follow_the_reference_probabilities() -> None:
    counts: Counter[str] = Counter()
    for n in range(8000):
        _, _, layout = place_context(
            "Summarize it.", "Some text", "Summarize it well.", random.Random(n)
        )
        counts[layout] += 1
    expected = dict(zip(RANDOM_LAYOUTS, (4, 4, 1, 1, 3, 3), strict=True))
    for layout, sixteenths in expected.items():
        assert abs(counts[layout] / 8000 - sixteenths / 16) < 0.02, (layout, counts)


def test_seeded_layouts_are_stable_across_runs_and_order() -> None:
    records = [
        {
            "id": f"r{i}",
            "instruction": f"Rewrite sentence {i}.",
            "context": f"Text {i}",
            "response": f"Detailed Comparison Result: x\nOptimized Instruction: Rewrite sentence {i} "
            "more clearly. [END]",
        }
        for i in range(40)
    ]
    first, _ = process_records(records, ProcessConfig(seed=1))
    reversed_run, _ = process_records(list(reversed(records)), ProcessConfig(seed=1))
    other_seed, _ = process_records(records, ProcessConfig(seed=2))
    assert sorted(first, key=lambda r: r["id"]) == sorted(reversed_run, key=lambda r: r["id"])
    assert first != other_seed


def test_parse_answer_and_drop_reasons() -> None:
    quoted = parse_answer('Detailed Comparison Result: x\nOptimized Instruction: "Say hi." [END]')
    assert quoted is not None and quoted.optimized_prompt == "Say hi."
    nested = parse_answer('Optimized Instruction: "Translate "Yechh" into Hindi." [END] trailing')
    assert nested is not None and nested.optimized_prompt == '"Translate "Yechh" into Hindi."'
    unsafe = parse_answer("Optimized Instruction: __import__('os').getcwd() [END]")
    assert unsafe is not None and unsafe.optimized_prompt == "__import__('os').getcwd()"
    assert parse_answer("I cannot help with that.") is None

    def answer(optimized: str) -> str:
        return f"Detailed Comparison Result: ok\nOptimized Instruction: {optimized} [END]"

    records = [
        {"id": "a", "instruction": "Tell me about dogs", "response": "Sorry, no."},
        {"id": "b", "instruction": "Tell me about dogs", "response": answer("Dogs?")},
        {"id": "c", "instruction": "Hi", "response": answer(" ".join(["word"] * 13))},
        {
            "id": "d",
            "instruction": "Translate [protected]hello[/protected]",
            "response": answer("Translate [PROTECTED]hello[/PROTECTED] into French"),
        },
        {"id": "e", "instruction": "Tell me about dogs"},
        {"id": "f", "instruction": "Tell me about dogs", "response": answer('""')},
        {
            "id": "g",
            "instruction": "Tell me about dogs",
            "response": answer("Describe dog breeds."),
        },
        {"id": "g", "instruction": "Tell me about dogs", "response": answer("A repeated id.")},
    ]
    kept, report = process_records(records, ProcessConfig())
    assert [r["id"] for r in kept] == ["g"]
    assert report["dropped_by_reason"] == {
        "no_optimized_instruction": 1,
        "shrunk": 1,
        "grown": 1,
        "protected_marker": 1,
        "no_answer": 1,
        "empty_optimized": 1,
        "duplicate": 1,
    }
    assert kept[0]["final_input"] == "Tell me about dogs"
    assert kept[0]["final_output"] == "Describe dog breeds."
    # the limits are options: 0 turns a ratio filter off
    kept, _ = process_records(records[1:3], ProcessConfig(max_shrink_ratio=0, max_growth_ratio=0))
    assert [r["id"] for r in kept] == ["b", "c"]


def test_bad_input_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TrainerConfigError, match="does not exist"):
        run_process(ProcessConfig(input_file=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "response": "x"}) + "\n")
    with pytest.raises(TrainerConfigError, match="lacks instruction"):
        run_process(ProcessConfig(input_file=str(bad), output_file=str(tmp_path / "o.jsonl")))
    with pytest.raises(TrainerConfigError, match="must be >= 0"):
        ProcessConfig(max_shrink_ratio=-1)


def test_config_parses_from_the_command_line() -> None:
    transformers = pytest.importorskip("transformers")
    (config,) = transformers.HfArgumentParser(ProcessConfig).parse_args_into_dataclasses(
        ["--input_file", "a.jsonl", "--max_growth_ratio", "8", "--filter_context_records", "true"]
    )
    assert (config.input_file, config.max_growth_ratio, config.filter_context_records) == (
        "a.jsonl",
        8.0,
        True,
    )
