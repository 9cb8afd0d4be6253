"""Reproduce the BPO optimizer: collect feedback, construct and process data, train, export.

Every stage is a module ``bpo_trainer.<stage>`` with a config dataclass and ``run_<stage>(config)``,
callable from a notebook or through the ``bpo-train STAGE`` command. Importing this package is
light: the stages (and torch, transformers, TRL) are imported when first used.

Example:
    >>> import bpo_trainer
    >>> sorted(bpo_trainer.configs_dir().glob("*.json"))[0].name
    'zero2.json'
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from bpo_trainer.errors import StageFailedError, TrainerConfigError

__version__ = "0.1.0"

_LAZY = {
    "SFTConfig": "bpo_trainer.sft",
    "run_sft": "bpo_trainer.sft",
    "InferConfig": "bpo_trainer.infer",
    "run_infer": "bpo_trainer.infer",
    "ExportConfig": "bpo_trainer.export",
    "run_export": "bpo_trainer.export",
    "CollectConfig": "bpo_trainer.collect",
    "run_collect": "bpo_trainer.collect",
    "ConstructConfig": "bpo_trainer.construct",
    "run_construct": "bpo_trainer.construct",
    "ProcessConfig": "bpo_trainer.process",
    "run_process": "bpo_trainer.process",
    "EvalConfig": "bpo_trainer.evaluate",
    "run_eval": "bpo_trainer.evaluate",
}

__all__ = [*_LAZY, "StageFailedError", "TrainerConfigError", "__version__", "configs_dir"]


def configs_dir() -> Path:
    """The folder of the shipped DeepSpeed (``zero2/3.json``) and accelerate configs."""
    return Path(__file__).parent / "configs"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
