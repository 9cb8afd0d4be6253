"""Fixtures of the trainer's tests: real BPO pairs on disk and tiny models trained on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory: pytest.TempPathFactory, bpo_val_records: list[dict]) -> Path:
    """16 real BPO training records as JSONL (``final_input`` / ``final_output``)."""
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", bpo_val_records[:16])


@pytest.fixture(scope="session")
def short_records(bpo_val_records: list[dict]) -> list[dict]:
    """The two real records with the shortest prompt + optimized prompt among the first 40."""
    return sorted(
        bpo_val_records[:40], key=lambda r: len(r["final_input"]) + len(r["final_output"])
    )[:2]


@pytest.fixture
def sft_config(tiny_llama_dir: Path, pairs_file: Path, tmp_path: Path) -> Callable[..., Any]:
    """Build an ``SFTConfig`` for a fast CPU run of the tiny model; keyword arguments override."""
    from bpo_trainer.sft import SFTConfig

    def make(**overrides: Any) -> SFTConfig:
        values: dict[str, Any] = {
            "model_name_or_path": str(tiny_llama_dir),
            "train_file": str(pairs_file),
            "output_dir": str(tmp_path / "sft"),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "gradient_checkpointing": False,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        }
        values.update(overrides)
        return SFTConfig(**values)

    return make


@pytest.fixture(scope="session")
def tiny_lora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, short_records: list[dict]
) -> Path:
    """A LoRA adapter for the tiny model that has memorized two real (prompt, rewrite) pairs.

    The tiny model's output layer is random and tiny, so LoRA alone cannot move its logits far;
    ``lm_head`` and the norms are trained in full beside the adapter (``lora_modules_to_save``).
    """
    from bpo_trainer.sft import SFTConfig, run_sft

    root = tmp_path_factory.mktemp("lora")
    data = write_jsonl(root / "memorize.jsonl", short_records * 8)
    config = SFTConfig(
        model_name_or_path=str(tiny_llama_dir),
        train_file=str(data),
        output_dir=str(root / "adapter"),
        use_peft=True,
        lora_dropout=0.0,
        lora_modules_to_save=["lm_head", "norm"],
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=60,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return run_sft(config).output_dir
