"""Stage ``export``: turn an ``sft`` output into a standalone model folder that servers load.

A LoRA adapter is merged into its base model (PEFT ``merge_and_unload``); a fully fine-tuned model
is re-saved. The folder holds safetensors weights, the tokenizer, a generation config with the BPO
decoding preset, and a model card (``README.md``, a ``huggingface_hub.ModelCard`` from
``cards/export.md``) describing the base model, the data and the training settings. TGI and vLLM
serve it with ``--model-id``/``--model /path/to/folder``; ``AutoModelForCausalLM`` loads it; and
when the base came from a GGUF (the default optimizer's does), ``bpo-conversion.json`` names that
GGUF so that ``LocalBackend`` runs the folder on its engine, and ``--gguf`` also writes
``model.gguf`` for llama.cpp's server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bpo_integrations.settings import GenerationSettings
from bpo_integrations.template import BPO_TEMPLATE
from bpo_trainer import __version__
from bpo_trainer.cards import render_card
from bpo_trainer.errors import TrainerConfigError

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

logger = logging.getLogger(__name__)

TRAINING_RECORD = "bpo_training.json"  # written by bpo_trainer.sft


@dataclass
class ExportConfig:
    """Config of the ``export`` stage.

    Example:
        >>> from bpo_trainer.export import ExportConfig
        >>> ExportConfig(model_dir="outputs/bpo-sft", output_dir="outputs/bpo-model").dtype
        'auto'
    """

    model_dir: str | None = field(
        default=None,
        metadata={"help": "The sft output_dir: a LoRA adapter folder or a full model folder."},
    )
    output_dir: str = field(
        default="outputs/bpo-model", metadata={"help": "Folder to write the servable model to."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model of a LoRA adapter; unset: the one the adapter names."},
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "dtype of the saved weights ('auto': the base's)."}
    )
    mode: Literal["stable", "aggressive", "greedy"] = field(
        default="stable",
        metadata={"help": "Decoding preset written to generation_config.json."},
    )
    max_new_tokens: int = field(
        default=512, metadata={"help": "max_new_tokens in generation_config.json."}
    )
    max_shard_size: str = field(
        default="5GB", metadata={"help": "Largest safetensors shard, e.g. '5GB'."}
    )
    model_name: str | None = field(
        default=None, metadata={"help": "Title of the model card; unset: the folder's name."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Write into output_dir even if it is not empty."}
    )
    gguf: bool = field(
        default=False,
        metadata={
            "help": "Also write model.gguf (the base's GGUF with these weights) for llama.cpp's "
            "server and LocalBackend; needs a base that came from a GGUF."
        },
    )
    gguf_precision: Literal["f16", "q8_0", "q4_0"] = field(
        default="f16", metadata={"help": "How model.gguf stores its weights."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to from_pretrained."})


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _check(config: ExportConfig) -> tuple[Path, Path]:
    if not config.model_dir:
        raise TrainerConfigError(
            "pass --model_dir, the folder `bpo-train sft` wrote (a LoRA adapter or a full model)"
        )
    source = Path(config.model_dir)
    if not source.is_dir():
        raise TrainerConfigError(f"model_dir {source} is not a folder")
    if not _is_adapter(source) and not (source / "config.json").is_file():
        raise TrainerConfigError(
            f"{source} holds neither a LoRA adapter (adapter_config.json) nor a model "
            "(config.json); pass the output_dir of `bpo-train sft`"
        )
    target = Path(config.output_dir)
    if target.resolve() == source.resolve():
        raise TrainerConfigError("output_dir must differ from model_dir")
    if target.is_dir() and any(target.iterdir()) and not config.overwrite:
        raise TrainerConfigError(
            f"{target} is not empty; pass --overwrite or choose another --output_dir"
        )
    return source, target


def _load_model(config: ExportConfig, source: Path) -> tuple[Any, str]:
    """The merged (or plain) model and the name of its base model."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype: Any = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if not _is_adapter(source):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        return model, _training_record(source).get("base_model", str(source))
    from peft import PeftModel

    adapter_config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise TrainerConfigError(
            f"{source}/adapter_config.json names no base model; pass --base_model"
        )
    base_model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    merged = PeftModel.from_pretrained(base_model, source).merge_and_unload()
    return merged, base


def _load_tokenizer(config: ExportConfig, source: Path, base: str) -> Any:
    from transformers import AutoTokenizer

    has_tokenizer = any((source / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))
    return AutoTokenizer.from_pretrained(
        source if has_tokenizer else base, trust_remote_code=config.trust_remote_code
    )


def _generation_config(config: ExportConfig, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    preset = GenerationSettings.for_mode(config.mode, max_new_tokens=config.max_new_tokens)
    values: dict[str, Any] = {
        "do_sample": preset.do_sample,
        "max_new_tokens": preset.max_new_tokens,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    if preset.do_sample:
        values.update(temperature=preset.temperature, top_p=preset.top_p)
    generation = GenerationConfig(**values)
    generation.validate()
    return generation


def _training_record(source: Path) -> dict[str, Any]:
    path = source / TRAINING_RECORD
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def run_export(config: ExportConfig) -> Path:
    """Write the servable model folder; returns its path.

    Example:
        >>> from bpo_trainer.export import ExportConfig, run_export
        >>> run_export(ExportConfig(model_dir="outputs/bpo-sft"))  # doctest: +SKIP
        PosixPath('outputs/bpo-model')
    """
    source, target = _check(config)
    model, base = _load_model(config, source)
    tokenizer = _load_tokenizer(config, source, base)
    model.generation_config = _generation_config(config, tokenizer)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, max_shard_size=config.max_shard_size)
    tokenizer.save_pretrained(target)
    record = _training_record(source)
    card = model_card(
        name=config.model_name or target.name,
        base_model=base,
        record=record,
        merged_from_adapter=_is_adapter(source),
        generation=model.generation_config.to_diff_dict(),
    )
    card.save(target / "README.md")
    if not any(target.glob("*.safetensors")):
        raise TrainerConfigError(f"no safetensors weights were written to {target}")
    _link_to_gguf(config, target, base)
    logger.info("exported %s to %s", source, target)
    return target


def _link_to_gguf(config: ExportConfig, target: Path, base: str) -> None:
    """Say which GGUF the base came from (``LocalBackend`` then runs the folder on its engine by
    writing these weights into that GGUF's layout), and write ``model.gguf`` if asked."""
    from bpo_integrations.inference.prepare import source_gguf
    from bpo_integrations.models import CONVERSION_MARKER

    gguf = source_gguf(base)
    if gguf is None:
        if config.gguf:
            raise TrainerConfigError(
                f"--gguf needs a base model that came from a GGUF file; {base} did not (convert "
                "it with llama.cpp's convert_hf_to_gguf.py, or serve the folder as it is)"
            )
        return
    record = {"source": str(gguf.resolve()), "weights": "merged"}
    (target / CONVERSION_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if config.gguf:
        from bpo_integrations.inference.gguf_files import write_merged_gguf

        write_merged_gguf(
            gguf, target / "model.gguf", precision=config.gguf_precision, weights_dir=target
        )


def model_card(
    *,
    name: str,
    base_model: str,
    record: dict[str, Any],
    merged_from_adapter: bool,
    generation: dict[str, Any],
) -> ModelCard:
    """The model card of an exported model (``cards/export.md``): what it is, how it was trained
    (from the ``sft`` run's ``bpo_training.json``, ``record``), how to serve it.

    Example:
        >>> card = model_card(name="bpo-tiny", base_model="tiny-llama", record={},
        ...                   merged_from_adapter=True, generation={"do_sample": False})
        >>> card.data.base_model, "LoRA, merged into the base" in card.text
        ('tiny-llama', True)
    """
    return render_card(
        "export.md",
        base_model=base_model,
        library_name="transformers",
        tags=["bpo", "prompt-optimization", "trl", "sft"],
        name=name,
        record=record,
        lora=merged_from_adapter or record.get("method") == "lora",
        generation_json=json.dumps(generation, indent=2, sort_keys=True),
        version=__version__,
        default_template=BPO_TEMPLATE,
    )
