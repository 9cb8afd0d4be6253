"""The recipe's data and training: the dev split the trainer holds out, and the ``sft`` run."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_integrations.template import format_bpo_prompt
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.quality import DevRecord
from bpo_trainer.sft import TRAINING_RECORD

if TYPE_CHECKING:
    from bpo_trainer.sft import SFTConfig

logger = logging.getLogger(__name__)


def dev_split(sft_config: SFTConfig) -> list[int]:
    """Indices (into the train file) of the records the trainer held out as its dev split.

    The held-out pairs come from the trainer's own :func:`~bpo_trainer.sft.load_datasets` (a
    ``train_test_split`` seeded by the recipe), then are matched back to their records.
    """
    from bpo_trainer.sft import load_datasets
    from bpo_trainer.sources import load_records

    if not sft_config.eval_split_size or sft_config.eval_file:
        raise TrainerConfigError(
            "the recipe needs a dev split drawn from train_file: set eval_split_size (and no "
            "eval_file)"
        )
    records = load_records(sft_config.train_file or "")
    positions: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        prompt = (record.get(sft_config.prompt_field) or "").strip()
        completion = (record.get(sft_config.completion_field) or "").strip()
        key = (format_bpo_prompt(prompt), " " + completion)
        positions.setdefault(key, []).append(index)
    _, evaluation = load_datasets(sft_config)
    assert evaluation is not None
    return sorted(positions[(row["prompt"], row["completion"])].pop(0) for row in evaluation)


def dev_records(sft_config: SFTConfig, indices: Sequence[int] | None = None) -> list[DevRecord]:
    """The dev split as :class:`~bpo_trainer.quality.DevRecord` objects."""
    from bpo_trainer.sources import load_records

    records = load_records(sft_config.train_file or "")
    chosen = dev_split(sft_config) if indices is None else indices
    return [DevRecord.from_record(i, records[i]) for i in chosen]


def data_summary(sft_config: SFTConfig) -> dict[str, Any]:
    """Facts of the training file the model card states: its records, and how many of them have
    the prompt itself as the reference rewrite."""
    from bpo_trainer.sources import load_records

    records = load_records(sft_config.train_file or "")
    identical = sum(
        (r.get(sft_config.prompt_field) or "").strip()
        == (r.get(sft_config.completion_field) or "").strip()
        for r in records
    )
    return {"records": len(records), "identical_pairs": identical}


def train(sft_config: SFTConfig, *, retrain: bool = False) -> Path:
    """Run the ``sft`` stage into ``sft_config.output_dir``; a finished run is reused."""
    from bpo_trainer.sft import run_sft

    output = Path(sft_config.output_dir or ".")
    if (output / TRAINING_RECORD).is_file() and (output / "adapter_config.json").is_file():
        if not retrain:
            logger.info("reusing the finished run in %s (--retrain to train again)", output)
            return output
        shutil.rmtree(output)
    return run_sft(sft_config).output_dir
