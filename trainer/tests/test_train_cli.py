"""``bpo-train``: the stage registry, generated help, YAML configs and errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bpo_trainer import cli
from bpo_trainer.cli import STAGES, Stage, main

ALL_STAGES = ["collect", "construct", "process", "sft", "infer", "export"]


def test_console_script_lists_the_six_stages() -> None:
    script = shutil.which("bpo-train") or str(Path(sys.executable).parent / "bpo-train")
    if not Path(script).exists():
        pytest.skip("bpo-train is not installed (pip install -e trainer)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("stages:\n")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in block.splitlines()]
    assert listed == list(STAGES)
    assert [name for name in listed if name in ALL_STAGES] == ALL_STAGES


def test_stage_help_shows_the_config_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: bpo-train sft")
    for flag in (
        "--model_name_or_path",
        "--train_file",
        "--prompt_field",
        "--prompt-field",
        "--completion_field",
        "--use_peft",
        "--lora_r",
        "--lora_alpha",
        "--lora_dropout",
        "--lora_target_modules",
        "--resume_from_checkpoint",
        "--eval_split_size",
        "--deepspeed",
        "--config",
    ):
        assert flag in text, flag
    assert "(default: 2e-05)" in text


def test_cli_runs_sft_from_a_yaml_file(
    tmp_path: Path, tiny_llama_dir: Path, pairs_file: Path
) -> None:
    output = tmp_path / "run"
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"""
model_name_or_path: {tiny_llama_dir}
train_file: {pairs_file}
output_dir: {output}
use_peft: true
lora_target_modules: [q_proj, v_proj]
learning_rate: 1e-3
max_steps: 2
per_device_train_batch_size: 4
gradient_checkpointing: false
save_strategy: "no"
report_to: none
disable_tqdm: true
""",
        encoding="utf-8",
    )
    assert main(["sft", "--config", str(config), "--max_steps", "3"]) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # the command line overrides the file
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    record = json.loads((output / "bpo_training.json").read_text())
    assert record["args"]["learning_rate"] == 1e-3  # YAML's "1e-3" string went through float()
    assert record["args"]["lr_scheduler_type"] == "cosine"


def test_unknown_yaml_field_is_named_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train_fiel: data.jsonl\nlora_r: 4\n", encoding="utf-8")
    assert main(["sft", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "train_fiel (did you mean train_file?)" in error


def test_errors_from_a_stage_are_printed_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--output_dir", str(tmp_path / "out")]) == 2
    assert "pass --model_dir" in capsys.readouterr().err
    assert main(["sft", "--train_file", str(tmp_path / "missing.jsonl"), "--report_to", "none",
                 "--output_dir", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "data file not found" in capsys.readouterr().err


def test_a_broken_stage_does_not_break_the_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = Stage("broken", "bpo_trainer._no_such_module", "X", "run_x", "Broken on purpose.")
    monkeypatch.setitem(cli.STAGES, "broken", broken)
    assert main(["broken", "--x", "1"]) == 2
    assert "stage 'broken' is unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    assert "--model_dir" in capsys.readouterr().out


def test_unknown_stage_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sfft"]) == 2
    assert "did you mean 'sft'?" in capsys.readouterr().err
    assert main([]) == 2
    assert "stages:" in capsys.readouterr().out


def test_config_file_forms_env_and_flag_aliases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BPO_TEST_FROM_YAML", raising=False)
    config = tmp_path / "sft.yaml"
    config.write_text(
        "env:\n  BPO_TEST_FROM_YAML: set\nlora_r: 4\nprompt_field: question\n", encoding="utf-8"
    )
    stage = STAGES["sft"]
    argv = [f"--config={config}", "--model_dtype", "bfloat16", "--output_dir", str(tmp_path)]
    parsed = cli.parse_stage_args(stage, [*argv, "--report_to", "none"])
    assert (parsed.lora_r, parsed.prompt_field, parsed.dtype) == (4, "question", "bfloat16")
    assert parsed.lora_target_modules == ["all-linear"]
    assert os.environ["BPO_TEST_FROM_YAML"] == "set"  # TRL reads the env: mapping


def test_unknown_flags_and_missing_files_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--model_dri", str(tmp_path)]) == 2
    assert "model_dri (did you mean model_dir?)" in capsys.readouterr().err
    assert main(["export", "--config", str(tmp_path / "none.yaml")]) == 2
    assert f"config file not found: {tmp_path / 'none.yaml'}" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_dir: [unclosed\n", encoding="utf-8")
    assert main(["export", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
