"""Stage ``sft``: fine-tune a causal LM into a BPO prompt optimizer with TRL's ``SFTTrainer``.

Each (prompt, optimized prompt) pair becomes a prompt-completion example: the prompt is the user's
prompt in the BPO template (:func:`bpo_integrations.template.format_bpo_prompt`), the completion is
the optimized prompt followed by EOS, and the loss covers the completion tokens only (the paper's
Eq. 1). Full fine-tuning by default; LoRA with ``use_peft``. Multi-GPU runs go through
``accelerate launch`` with the shipped DeepSpeed configs (``--deepspeed zero2`` or ``zero3``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trl
from transformers.trainer_utils import (
    SaveStrategy,
    SchedulerType,
    get_last_checkpoint,
)

from bpo_integrations.template import BPO_TEMPLATE, format_bpo_prompt
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.sources import load_records

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

TRAINING_RECORD = "bpo_training.json"
"""Written into ``output_dir`` after training; ``export`` reads it for the model card."""

ALL_LINEAR = "all-linear"
"""PEFT's shorthand for every linear layer but the output layer."""

_DEEPSPEED_PRESETS = ("zero2", "zero3")
_LAST_CHECKPOINT = ("last", "auto", "true")


@dataclass
class SFTConfig(trl.SFTConfig, trl.ModelConfig):
    """Config of the ``sft`` stage: TRL's ``SFTConfig`` and ``ModelConfig`` (the model, its dtype,
    LoRA) plus the data.

    The defaults reproduce the reference training run (thu-coai/BPO ``src/training``, which trains
    ``Llama-2-7b-chat`` on 8 GPUs): learning rate 2e-5, 5 epochs, 4 examples per device, warmup over
    the first 10% of the steps, AdamW with weight decay 0.01, gradient clipping 1.0, sequences of at
    most 512 tokens; with a cosine decay. LoRA defaults are the reference's (r 8, alpha 32, dropout
    0.1). ``bf16`` is switched on where the GPU supports it. The LoRA config is TRL's
    (``trl.get_peft_config``), 4- and 8-bit loading TRL's (``trl.get_quantization_config``).

    Example:
        >>> from bpo_trainer.sft import SFTConfig
        >>> config = SFTConfig(
        ...     model_name_or_path="path/to/tiny-llama", train_file="pairs.jsonl",
        ...     output_dir="runs/sft", use_peft=True, max_steps=2, report_to="none",
        ... )
        >>> (config.learning_rate, config.max_length, config.completion_only_loss)
        (2e-05, 512, True)
    """

    # trl.ModelConfig fields whose defaults follow the reference run.
    model_name_or_path: str | None = field(
        default="meta-llama/Llama-2-7b-chat-hf",
        metadata={"help": "Base causal LM to fine-tune: a Hub id or a local folder."},
    )
    dtype: str | None = field(
        default="float32",
        metadata={
            "help": "dtype to load the base model's weights in ('auto': as saved).",
            "choices": ["auto", "bfloat16", "float16", "float32"],
            "aliases": ["--model_dtype"],
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA layers."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: [ALL_LINEAR],
        metadata={
            "help": "Modules that get LoRA layers: names such as q_proj v_proj, or 'all-linear'."
        },
    )

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training pairs: a .jsonl or .json file (BPO's train.json/val.json format) or "
            "a Hub data set id."
        },
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Evaluation pairs, in the same format as train_file."}
    )
    eval_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this part of train_file for evaluation when no eval_file is given: "
            "a fraction in (0, 1) or a number of examples (>= 1); 0 disables it."
        },
    )
    prompt_field: str = field(
        default="final_input",
        metadata={"help": "Field of a record that holds the user's original prompt."},
    )
    completion_field: str = field(
        default="final_output",
        metadata={"help": "Field of a record that holds the optimized prompt (the target)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs (for quick runs)."}
    )
    auto_resume: bool = field(
        default=True,
        metadata={
            "help": "Resume from the last checkpoint in output_dir when there is one and "
            "resume_from_checkpoint is not set."
        },
    )

    # TrainingArguments / trl.SFTConfig fields whose defaults follow the reference run.
    output_dir: str | None = field(
        default="outputs/bpo-sft",
        metadata={"help": "Where checkpoints, the final model and bpo_training.json go."},
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Learning-rate schedule after the warmup."}
    )
    num_train_epochs: float = field(default=5.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Training examples per device and step."}
    )
    warmup_steps: float = field(
        default=0.1,
        metadata={
            "help": "Warmup steps: an integer, or a float in [0, 1) as a ratio of all steps."
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_length: int | None = field(
        default=512, metadata={"help": "Longest tokenized prompt + completion; longer are cut."}
    )
    completion_only_loss: bool | None = field(
        default=True,
        metadata={"help": "Loss on the optimized prompt's tokens only (BPO's Eq. 1)."},
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "When to save a checkpoint: 'steps', 'epoch' or 'no'."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; unset: on where the GPU supports it."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint folder to resume from, or 'last' for the newest one in output_dir."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            self.bf16 = _bf16_supported()
        if isinstance(self.deepspeed, str):
            self.deepspeed = resolve_deepspeed(self.deepspeed)
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [
                m.strip() for m in self.lora_target_modules.split(",") if m.strip()
            ]
        if self.load_in_8bit and self.load_in_4bit:
            raise TrainerConfigError("load_in_8bit and load_in_4bit exclude each other: pick one")
        has_eval = self.eval_file is not None or self.eval_split_size > 0
        if has_eval and self.eval_strategy == "no":
            self.eval_strategy = "epoch" if self.save_strategy == "epoch" else "steps"
            if self.eval_steps is None:
                self.eval_steps = self.save_steps
        super().__post_init__()


@dataclass(frozen=True)
class SFTRun:
    """What :func:`run_sft` produced."""

    output_dir: Path
    global_step: int
    training_loss: float
    metrics: dict[str, float]
    resumed_from: str | None = None


def resolve_deepspeed(value: str) -> str:
    """``zero2`` / ``zero3`` name the shipped DeepSpeed configs; anything else is a path.

    Example:
        >>> resolve_deepspeed("zero3").endswith("configs/zero3.json")
        True
    """
    if value in _DEEPSPEED_PRESETS:
        from bpo_trainer import configs_dir

        return str(configs_dir() / f"{value}.json")
    return value


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def build_pairs(
    records: list[dict[str, Any]], prompt_field: str, completion_field: str, *, source: str
) -> list[dict[str, str]]:
    """Prompt-completion examples in the BPO format; records with an empty side are skipped.

    The completion starts with a space, as the reference tokenized the target on its own (which
    gives Llama's SentencePiece a word-start token after ``[/INST]``).

    Example:
        >>> build_pairs([{"q": "Hi", "a": "Say hi back."}], "q", "a", source="x")[0]["completion"]
        ' Say hi back.'
    """
    pairs: list[dict[str, str]] = []
    skipped = 0
    for index, record in enumerate(records):
        for name in (prompt_field, completion_field):
            if name not in record:
                raise TrainerConfigError(
                    f"{source}: record {index} has no field {name!r} (it has {sorted(record)}); "
                    "name your fields with --prompt_field and --completion_field"
                )
            if record[name] is not None and not isinstance(record[name], str):
                raise TrainerConfigError(
                    f"{source}: record {index} field {name!r} is a {type(record[name]).__name__}, "
                    "expected a string"
                )
        prompt = (record[prompt_field] or "").strip()
        completion = (record[completion_field] or "").strip()
        if not prompt or not completion:
            skipped += 1
            continue
        pairs.append({"prompt": format_bpo_prompt(prompt), "completion": " " + completion})
    if skipped:
        logger.warning("%s: skipped %d records with an empty prompt or completion", source, skipped)
    if not pairs:
        raise TrainerConfigError(f"{source}: no usable (prompt, completion) pair")
    return pairs


def load_datasets(config: SFTConfig) -> tuple[Dataset, Dataset | None]:
    """The training set and the optional evaluation set of ``config``."""
    from datasets import Dataset

    if not config.train_file:
        raise TrainerConfigError(
            "no training data: pass --train_file with a .jsonl/.json file of "
            f"{config.prompt_field}/{config.completion_field} pairs (e.g. the output of "
            "`bpo-train process`)"
        )
    records = load_records(config.train_file)
    if config.max_train_samples is not None:
        records = records[: config.max_train_samples]
    train = Dataset.from_list(
        build_pairs(records, config.prompt_field, config.completion_field, source=config.train_file)
    )
    if config.eval_file:
        eval_records = load_records(config.eval_file)
        pairs = build_pairs(
            eval_records, config.prompt_field, config.completion_field, source=config.eval_file
        )
        return train, Dataset.from_list(pairs)
    if config.eval_split_size > 0:
        size: float | int = config.eval_split_size
        if size >= 1:
            size = int(size)
        if (size if isinstance(size, int) else 1) >= len(train):
            raise TrainerConfigError(
                f"eval_split_size={config.eval_split_size} leaves no training data from "
                f"{len(train)} pairs; use a fraction in (0, 1) or fewer examples"
            )
        split = train.train_test_split(test_size=size, seed=config.seed)
        return split["train"], split["test"]
    return train, None


def lora_config(config: SFTConfig) -> PeftConfig | None:
    """TRL's LoRA config of ``config`` (``trl.get_peft_config``); ``None`` without ``use_peft``.

    Example:
        >>> lora_config(SFTConfig(output_dir="o", use_peft=True, report_to="none")).target_modules
        'all-linear'
    """
    peft_config = trl.get_peft_config(config)
    if peft_config is not None and config.lora_target_modules == [ALL_LINEAR]:
        # PEFT reads the shorthand only as a string; a list would name a module "all-linear".
        peft_config.target_modules = ALL_LINEAR
    return peft_config


def model_init_kwargs(config: SFTConfig) -> dict[str, Any]:
    """How ``SFTTrainer`` loads the base model: TRL's ``sft`` script's keyword arguments from the
    ``ModelConfig`` fields, then ``model_init_kwargs`` as given."""
    values = {
        "revision": config.model_revision,
        "attn_implementation": config.attn_implementation,
        "dtype": config.dtype,
    }
    return {**values, **(config.model_init_kwargs or {})}


def resolve_checkpoint(config: SFTConfig) -> str | None:
    """The checkpoint to resume from: the one asked for, else the newest in ``output_dir``."""
    asked = config.resume_from_checkpoint
    output_dir = Path(config.output_dir or ".")
    if asked:
        if asked.lower() in _LAST_CHECKPOINT:
            last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
            if last is None:
                raise TrainerConfigError(
                    f"resume_from_checkpoint={asked!r} but {output_dir} has no checkpoint-* "
                    "folder; drop the option to start from scratch"
                )
            return last
        if not Path(asked).is_dir():
            raise TrainerConfigError(
                f"checkpoint {asked} not found; pass a checkpoint-N folder or 'last'"
            )
        return asked
    if config.auto_resume and output_dir.is_dir():
        return get_last_checkpoint(output_dir)
    return None


def build_trainer(
    config: SFTConfig, *, callbacks: list[TrainerCallback] | None = None
) -> trl.SFTTrainer:
    """The TRL ``SFTTrainer`` for ``config``, with its data prepared (labels built, truncated)."""
    from transformers import AutoTokenizer

    train, evaluation = load_datasets(config)
    tokenizer = AutoTokenizer.from_pretrained(
        config.model_name_or_path, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.eos_token is None:
        raise TrainerConfigError(
            f"the tokenizer of {config.model_name_or_path} has no EOS token, which ends every "
            "optimized prompt; pass --eos_token with a token of its vocabulary"
        )
    config.model_init_kwargs = model_init_kwargs(config)
    return trl.SFTTrainer(
        model=config.model_name_or_path,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        quantization_config=trl.get_quantization_config(config),
        callbacks=callbacks,
    )


def run_sft(config: SFTConfig, *, callbacks: list[TrainerCallback] | None = None) -> SFTRun:
    """Train; save the model (or LoRA adapter) and tokenizer to ``output_dir``; describe the run.

    Resumes from ``resume_from_checkpoint``, or from the newest checkpoint in ``output_dir`` when
    ``auto_resume`` is on. Writes ``bpo_training.json`` (base model, data, settings, metrics),
    which ``export`` turns into the model card.

    Example:
        >>> from bpo_trainer.sft import SFTConfig, run_sft
        >>> config = SFTConfig(model_name_or_path="tiny-llama", train_file="pairs.jsonl")
        >>> run = run_sft(config)  # doctest: +SKIP
        >>> run.output_dir  # doctest: +SKIP
        PosixPath('outputs/bpo-sft')
    """
    checkpoint = resolve_checkpoint(config)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer = build_trainer(config, callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    output_dir = Path(trainer.args.output_dir)
    trainer.save_model(str(output_dir))
    metrics: dict[str, float] = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        _write_training_record(config, trainer, metrics, checkpoint)
    return SFTRun(
        output_dir=output_dir,
        global_step=trainer.state.global_step,
        training_loss=float(result.training_loss),
        metrics=metrics,
        resumed_from=checkpoint,
    )


def _write_training_record(
    config: SFTConfig, trainer: trl.SFTTrainer, metrics: dict[str, float], resumed: str | None
) -> None:
    record = {
        "base_model": config.model_name_or_path,
        "template": BPO_TEMPLATE,
        "method": "lora" if config.use_peft else "full",
        "data": {
            "train_file": config.train_file,
            "eval_file": config.eval_file,
            "prompt_field": config.prompt_field,
            "completion_field": config.completion_field,
            "train_examples": len(trainer.train_dataset),
            "eval_examples": len(trainer.eval_dataset) if trainer.eval_dataset else 0,
        },
        "global_step": trainer.state.global_step,
        "resumed_from": resumed,
        "metrics": metrics,
        "args": json.loads(config.to_json_string()),
    }
    path = Path(config.output_dir or ".") / TRAINING_RECORD
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
