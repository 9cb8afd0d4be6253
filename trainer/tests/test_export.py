"""The export stage, and the whole path: real pairs -> sft (LoRA) -> export -> serve -> optimize."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from bpo_trainer import TrainerConfigError
from bpo_trainer.export import ExportConfig, run_export

from bpo_integrations import BPOOptimizer
from bpo_integrations.template import BPO_TEMPLATE, format_bpo_prompt


@pytest.fixture(scope="module")
def exported(tiny_lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("export") / "bpo-tiny"
    return run_export(ExportConfig(model_dir=str(tiny_lora_run), output_dir=str(target)))


def test_export_writes_the_folder_tgi_loads(exported: Path, tiny_llama_dir: Path) -> None:
    names = {path.name for path in exported.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert any(name.endswith(".safetensors") for name in names)
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((exported / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["temperature"], generation["top_p"]) == (
        True,
        0.6,
        0.9,
    )
    assert generation["max_new_tokens"] == 512


def test_model_card_describes_base_data_settings_and_template(
    exported: Path, tiny_llama_dir: Path
) -> None:
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    assert str(tiny_llama_dir) in card
    assert BPO_TEMPLATE in card
    assert "LoRA, merged into the base" in card
    assert "memorize.jsonl" in card and "(16 pairs" in card
    assert "| learning rate | `0.01` |" in card
    assert "| LoRA r | `8` |" in card
    assert "Training steps: 60" in card


def test_end_to_end_real_pairs_to_optimized_prompt(
    exported: Path, tiny_llama_dir: Path, short_records: list[dict]
) -> None:
    """The merged weights alone reproduce what the adapter learned, in both loaders."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bpo_integrations.backends.local import LocalBackend

    model = AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    record = short_records[0]
    inputs = tokenizer(format_bpo_prompt(record["final_input"]), return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=40)
        base_output = base.generate(**inputs, do_sample=False, max_new_tokens=40)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == record["final_output"]
    assert not torch.equal(output, base_output)

    optimizer = BPOOptimizer(
        LocalBackend(str(exported), device="cpu", template="bpo"),
        mode="greedy",
        timeout=None,
        max_retries=0,
    )
    try:
        results = optimizer.optimize_batch([r["final_input"] for r in short_records])
    finally:
        optimizer.close()
    for result, record in zip(results, short_records, strict=True):
        assert not result.fell_back, result.fallback_reason
        assert result.optimized == record["final_output"]


def test_export_refuses_to_overwrite_and_names_the_fix(
    exported: Path, tiny_lora_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainerConfigError, match="--overwrite"):
        run_export(ExportConfig(model_dir=str(tiny_lora_run), output_dir=str(exported)))
    with pytest.raises(TrainerConfigError, match="--model_dir"):
        run_export(ExportConfig(output_dir=str(tmp_path / "out")))
    with pytest.raises(TrainerConfigError, match="neither a LoRA adapter"):
        run_export(ExportConfig(model_dir=str(tmp_path), output_dir=str(tmp_path / "out")))


def test_export_of_a_full_fine_tune(sft_config, tmp_path: Path) -> None:
    from bpo_trainer.sft import run_sft
    from transformers import AutoModelForCausalLM

    run = run_sft(sft_config(max_steps=1))
    target = run_export(
        ExportConfig(model_dir=str(run.output_dir), output_dir=str(tmp_path / "full"))
    )
    card = (target / "README.md").read_text()
    assert "full fine-tuning" in card and "LoRA r" not in card
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.model_type == "llama"
