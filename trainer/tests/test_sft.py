"""The sft stage on a tiny Llama and real BPO pairs: labels, learning, LoRA, resuming, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch
from bpo_trainer import TrainerConfigError, configs_dir
from bpo_trainer.sft import SFTConfig, build_trainer, resolve_deepspeed, run_sft
from safetensors.torch import load_file
from transformers import TrainerCallback

from bpo_integrations.template import format_bpo_prompt


def test_defaults_follow_the_reference_run() -> None:
    config = SFTConfig(output_dir="unused", report_to="none")
    assert config.learning_rate == 2e-5
    assert config.lr_scheduler_type == "cosine"
    assert config.max_length == 512
    assert (config.num_train_epochs, config.per_device_train_batch_size) == (5.0, 4)
    assert (config.warmup_steps, config.weight_decay, config.max_grad_norm) == (0.1, 0.01, 1.0)
    assert config.completion_only_loss is True
    assert config.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert config.model_name_or_path == "meta-llama/Llama-2-7b-chat-hf"
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (8, 32, 0.1)
    assert config.lora_target_modules == ["all-linear"]


def test_only_the_optimized_prompt_carries_labels(sft_config, bpo_val_records) -> None:
    trainer = build_trainer(sft_config())
    tokenizer = trainer.processing_class
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    for row, record in enumerate(bpo_val_records[:3]):
        prompt_ids = tokenizer(format_bpo_prompt(record["final_input"]))["input_ids"]
        length = int(batch["attention_mask"][row].sum())
        labels = batch["labels"][row]
        input_ids = batch["input_ids"][row]
        # The BPO template and the user's prompt: no loss at all.
        assert input_ids[: len(prompt_ids)].tolist() == prompt_ids
        assert (labels[: len(prompt_ids)] == -100).all()
        # The optimized prompt and EOS: every token is a target.
        assert (
            labels[len(prompt_ids) : length].tolist()
            == input_ids[len(prompt_ids) : length].tolist()
        )
        target = tokenizer.decode(labels[len(prompt_ids) : length])
        assert target == " " + record["final_output"].strip() + tokenizer.eos_token
        # Padding: no loss.
        assert (labels[length:] == -100).all()


def test_loss_goes_down(sft_config, tmp_path: Path, bpo_val_records) -> None:
    data = tmp_path / "four.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in bpo_val_records[:4] * 3), encoding="utf-8"
    )
    config = sft_config(
        train_file=str(data),
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=12,
    )
    run = run_sft(config)
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.75 * first, losses
    assert run.global_step == 12
    assert (run.output_dir / "model.safetensors").is_file()
    record = json.loads((run.output_dir / "bpo_training.json").read_text())
    assert record["method"] == "full"
    assert record["data"]["train_examples"] == 12
    assert record["args"]["learning_rate"] == 5e-3


def test_lora_run_produces_an_adapter(tiny_lora_run: Path, tiny_llama_dir: Path) -> None:
    adapter_config = json.loads((tiny_lora_run / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 32
    assert Path(adapter_config["base_model_name_or_path"]) == tiny_llama_dir
    weights = load_file(tiny_lora_run / "adapter_model.safetensors")
    lora_b = [name for name in weights if "lora_B" in name]
    assert lora_b, sorted(weights)[:5]
    # LoRA's B starts at zero: a trained adapter has moved it.
    assert any(weights[name].abs().sum() > 0 for name in lora_b)
    assert not (tiny_lora_run / "model.safetensors").exists()
    record = json.loads((tiny_lora_run / "bpo_training.json").read_text())
    assert record["method"] == "lora" and record["global_step"] == 60


class _CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash before step {self.step + 1}")


class _Steps(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_resume_continues_at_the_right_step(sft_config, tmp_path: Path) -> None:
    settings = {
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    straight = run_sft(sft_config(output_dir=str(tmp_path / "straight"), **settings))

    interrupted = sft_config(output_dir=str(tmp_path / "resumed"), **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sft(interrupted, callbacks=[_CrashAt(2)])
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()

    steps = _Steps()
    resumed = run_sft(
        sft_config(output_dir=str(tmp_path / "resumed"), **settings), callbacks=[steps]
    )
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    assert steps.seen == [3, 4]
    assert resumed.global_step == 4
    reference, continued = _weights(straight.output_dir), _weights(resumed.output_dir)
    for name, tensor in reference.items():
        torch.testing.assert_close(continued[name], tensor, rtol=1e-4, atol=1e-5)


def test_explicit_resume_needs_a_checkpoint(sft_config, tmp_path: Path) -> None:
    with pytest.raises(TrainerConfigError, match="no checkpoint"):
        run_sft(sft_config(output_dir=str(tmp_path / "empty"), resume_from_checkpoint="last"))
    with pytest.raises(TrainerConfigError, match="not found"):
        run_sft(sft_config(resume_from_checkpoint=str(tmp_path / "nowhere")))


def test_wrong_field_names_say_how_to_fix_them(sft_config) -> None:
    with pytest.raises(TrainerConfigError, match="--prompt_field") as error:
        build_trainer(sft_config(prompt_field="question"))
    assert "'question'" in str(error.value) and "final_input" in str(error.value)


def test_eval_split_holds_out_pairs(sft_config) -> None:
    trainer = build_trainer(sft_config(eval_split_size=4))
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (12, 4)
    assert trainer.args.eval_strategy == "steps"


def test_deepspeed_configs_are_valid_accelerate_and_deepspeed_configs() -> None:
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin

    folder = configs_dir()
    for stage in (2, 3):
        path = folder / f"zero{stage}.json"
        assert resolve_deepspeed(f"zero{stage}") == str(path)
        plugin = DeepSpeedPlugin(hf_ds_config=str(path))
        assert plugin.zero_stage == stage
        config = json.loads(path.read_text())
        assert "scheduler" not in config  # the Trainer's cosine schedule applies
        autos = _auto_keys(config)
        # The keys transformers' HfTrainerDeepSpeedConfig fills from the TrainingArguments.
        fillable = {
            "train_micro_batch_size_per_gpu",
            "train_batch_size",
            "gradient_accumulation_steps",
            "gradient_clipping",
            "optimizer.params.lr",
            "optimizer.params.betas",
            "optimizer.params.eps",
            "optimizer.params.weight_decay",
            "fp16.enabled",
            "bf16.enabled",
            "zero_optimization.reduce_bucket_size",
            "zero_optimization.stage3_prefetch_bucket_size",
            "zero_optimization.stage3_param_persistence_threshold",
        }
        assert autos <= fillable, autos - fillable
    assert plugin.hf_ds_config.is_zero3()
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    cluster = ClusterConfig.from_yaml_file(str(folder / "accelerate.yaml"))
    assert cluster.distributed_type == "MULTI_GPU" and cluster.num_processes == 8
    assert resolve_deepspeed("my/own.json") == "my/own.json"


def _auto_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        if isinstance(value, dict):
            keys |= _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            keys.add(prefix + key)
    return keys
