"""Packaging the trained adapter: float32 and float16 copies, which one ships, and the folder
``LocalBackend`` loads (adapter, config and a short ``bpo_training.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bpo_integrations.template import BPO_TEMPLATE
from bpo_trainer.quality import DevRecord, greedy_settings, raw_outputs, score_system
from bpo_trainer.recipe.evaluate import local_backend
from bpo_trainer.sft import TRAINING_RECORD

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", TRAINING_RECORD)
"""What a packaged adapter folder holds (besides its model card)."""


@dataclass(frozen=True)
class PrecisionCheck:
    """Greedy rewrites of the dev split with the adapter in float32 and in float16."""

    identical: int
    n: int
    chrf_fp32: float
    chrf_fp16: float
    size_fp32: int
    size_fp16: int
    chosen: str


def package_adapter(
    sft_dir: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    dtype: Literal["float16", "float32"],
    base_model: str,
    extra: dict[str, Any] | None = None,
    data_label: str | None = None,
) -> Path:
    """Write the adapter of ``sft_dir`` into ``target`` in ``dtype``, naming ``base_model``.

    ``target`` gets ``adapter_config.json``, ``adapter_model.safetensors`` and a short
    ``bpo_training.json`` (the template it was trained on, the data, the metrics: what
    ``LocalBackend(template="auto")`` and the model card read). ``data_label`` replaces the
    training file's path there (a machine's absolute path means nothing to users).
    """
    import torch
    from safetensors.torch import load_file, save_file

    source, target = Path(sft_dir), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    adapter_config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_model
    (target / "adapter_config.json").write_text(
        json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    wanted = getattr(torch, dtype)
    tensors = {
        name: (tensor.to(wanted) if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in load_file(source / "adapter_model.safetensors").items()
    }
    save_file(tensors, target / "adapter_model.safetensors", metadata={"format": "pt"})
    (target / "adapter_model.safetensors").chmod(0o644)  # safetensors writes it owner-only

    run = json.loads((source / TRAINING_RECORD).read_text(encoding="utf-8"))
    data = dict(run.get("data") or {})
    if data_label is not None:
        data["train_file"] = data_label
    record = {
        "base_model": base_model,
        "template": run.get("template", BPO_TEMPLATE),
        "method": run.get("method"),
        "adapter_dtype": dtype,
        "data": data,
        "global_step": run.get("global_step"),
        "metrics": run.get("metrics"),
        **(extra or {}),
    }
    (target / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target


def default_assets_dir() -> Path:
    """``bpo_integrations/assets/default_optimizer`` of the installed middleware."""
    from bpo_integrations.models import default_adapter_path

    return default_adapter_path()


def compare_precisions(
    base: str,
    fp32_dir: Path,
    fp16_dir: Path,
    records: Sequence[DevRecord],
    *,
    max_new_tokens: int,
    tolerance: float,
    dtype: Literal["auto", "float16", "float32"],
    device: str = "cpu",
) -> tuple[PrecisionCheck, dict[str, list[str]]]:
    """Greedy raw rewrites of ``records`` with each precision; which one to ship."""
    settings = greedy_settings(max_new_tokens)
    outputs: dict[str, list[str]] = {}
    for name, folder in (("float32", fp32_dir), ("float16", fp16_dir)):
        backend = local_backend(base, folder, device)
        try:
            outputs[name] = raw_outputs(backend, records, settings)
        finally:
            backend.close()
    chrf32 = score_system("fp32", records, outputs["float32"]).chrf
    chrf16 = score_system("fp16", records, outputs["float16"]).chrf
    if dtype == "auto":
        chosen = "float16" if chrf16 >= chrf32 - tolerance else "float32"
    else:
        chosen = dtype
    check = PrecisionCheck(
        identical=sum(a == b for a, b in zip(outputs["float32"], outputs["float16"], strict=True)),
        n=len(records),
        chrf_fp32=chrf32,
        chrf_fp16=chrf16,
        size_fp32=(fp32_dir / "adapter_model.safetensors").stat().st_size,
        size_fp16=(fp16_dir / "adapter_model.safetensors").stat().st_size,
        chosen=chosen,
    )
    return check, outputs
