"""The infer stage: rewrite a data set's prompts, keep contexts, resume after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.infer import InferConfig, run_infer

from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import BackendUnavailableError
from bpo_integrations.jsonl import read_jsonl

SUFFIX = " Answer step by step, with one example."


@pytest.fixture
def alpaca_file(tmp_path: Path, bpo_val_records: list[dict]) -> Path:
    """20 real instructions in Alpaca's format; half of them have an ``input`` context."""
    with_context = [r for r in bpo_val_records if r.get("context")][:10]
    without = [r for r in bpo_val_records if not r.get("context")][:10]
    rows = [
        {"instruction": r["instruction"], "input": r.get("context", ""), "output": r["good_res"]}
        for pair in zip(with_context, without, strict=True)
        for r in pair
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


class Rewriter:
    """Appends SUFFIX; records every prompt it sees; raises after ``fail_after`` prompts."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.seen: list[str] = []

    def __call__(self, prompt: str) -> str:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("the optimizer crashed")
        self.seen.append(prompt)
        return prompt + SUFFIX


def _config(alpaca_file: Path, tmp_path: Path, **overrides) -> InferConfig:
    values = {
        "dataset": str(alpaca_file),
        "output_file": str(tmp_path / "out" / "alpaca_bpo.jsonl"),
        "batch_size": 4,
        "progress": False,
    }
    values.update(overrides)
    return InferConfig(**values)


def test_crash_then_restart_repeats_nothing_and_loses_nothing(
    alpaca_file: Path, tmp_path: Path
) -> None:
    rows = json.loads(alpaca_file.read_text())
    crashing = Rewriter(fail_after=10)
    config = _config(alpaca_file, tmp_path, on_error="raise")
    with pytest.raises(RuntimeError, match="crashed"):
        run_infer(config, backend=CallableBackend(crashing))
    output = Path(config.output_file)
    after_crash = list(read_jsonl(output))
    assert [r["id"] for r in after_crash] == list(range(8))  # two whole batches of 4
    # A crash in the middle of writing a line leaves a partial line behind.
    with output.open("a", encoding="utf-8") as handle:
        handle.write('{"id": 8, "instruction": "cut off')

    resumed = Rewriter()
    summary = run_infer(config, backend=CallableBackend(resumed))
    assert (summary.total, summary.already_done, summary.written) == (20, 8, 12)
    assert resumed.seen == [row["instruction"] for row in rows[8:]]

    final = list(read_jsonl(output))
    assert sorted(r["id"] for r in final) == list(range(20))
    for record in final:
        row = rows[record["id"]]
        assert record["optimized_prompt"] == row["instruction"] + SUFFIX
        assert record["input"] == row["input"] and record["output"] == row["output"]
        assert record["fell_back"] is False

    again = run_infer(config, backend=CallableBackend(Rewriter(fail_after=0)))
    assert (again.already_done, again.written) == (20, 0)


def test_context_is_passed_along_never_rewritten(alpaca_file: Path, tmp_path: Path) -> None:
    rewriter = Rewriter()
    run_infer(_config(alpaca_file, tmp_path), backend=CallableBackend(rewriter))
    rows = json.loads(alpaca_file.read_text())
    contexts = [row["input"] for row in rows if row["input"]]
    assert len(contexts) == 10
    for context in contexts:
        assert all(context not in prompt for prompt in rewriter.seen)


def test_backend_outage_writes_nothing_and_says_how_to_resume(
    alpaca_file: Path, tmp_path: Path
) -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused")

    config = _config(alpaca_file, tmp_path)
    with pytest.raises(StageFailedError, match="run again") as error:
        run_infer(config, backend=CallableBackend(down))
    assert "backend_unavailable" in str(error.value)
    assert list(read_jsonl(config.output_file)) == []
    summary = run_infer(config, backend=CallableBackend(Rewriter()))
    assert summary.written == 20


def test_rejected_rewrites_are_kept_and_flagged(alpaca_file: Path, tmp_path: Path) -> None:
    summary = run_infer(
        _config(alpaca_file, tmp_path, max_samples=4), backend=CallableBackend(lambda p: "")
    )
    assert (summary.written, summary.fell_back) == (4, 4)
    records = list(read_jsonl(tmp_path / "out" / "alpaca_bpo.jsonl"))
    assert all(r["fell_back"] and r["fallback_reason"] == "empty_output" for r in records)
    assert [r["optimized_prompt"] for r in records] == [r["instruction"] for r in records]


def test_bad_input_names_the_fix(alpaca_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainerConfigError, match="--prompt_field"):
        run_infer(_config(alpaca_file, tmp_path, prompt_field="question"), backend=None)
    duplicated = tmp_path / "dup.jsonl"
    duplicated.write_text('{"id": 1, "instruction": "a"}\n{"id": 1, "instruction": "b"}\n')
    with pytest.raises(TrainerConfigError, match="occurs twice"):
        run_infer(_config(duplicated, tmp_path), backend=None)
    with pytest.raises(TrainerConfigError, match="--endpoint"):
        InferConfig(backend="tgi")


def test_local_backend_with_a_trained_adapter_through_the_cli(
    tiny_llama_dir: Path, tiny_lora_run: Path, short_records: list[dict], tmp_path: Path
) -> None:
    from bpo_trainer.cli import main

    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"qid": f"q{i}", "prompt": r["final_input"]}) + "\n"
            for i, r in enumerate(short_records)
        )
    )
    output = tmp_path / "rewritten.jsonl"
    status = main(
        [
            "infer",
            "--dataset", str(data),
            "--prompt_field", "prompt",
            "--context_field", "",
            "--id_field", "qid",
            "--output_file", str(output),
            "--backend", "local",
            "--model", str(tiny_llama_dir),
            "--adapter", str(tiny_lora_run),
            "--precision", "f16",
            "--template", "bpo",
            "--mode", "greedy",
            "--max_new_tokens", "48",
            "--no_progress",
        ]
    )  # fmt: skip
    assert status == 0
    records = {r["qid"]: r for r in read_jsonl(output)}
    for i, record in enumerate(short_records):
        assert records[f"q{i}"]["optimized_prompt"] == record["final_output"]
        assert records[f"q{i}"]["fell_back"] is False
