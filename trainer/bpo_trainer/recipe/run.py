"""The whole recipe: train (or reuse), package, compare precisions, evaluate, time, then write
``report.json`` and the model card from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bpo_trainer.quality import DevRecord, SystemScore
from bpo_trainer.recipe.card import write_model_card
from bpo_trainer.recipe.config import (
    DEFAULT_BASE_ID,
    RECIPE_FILE,
    RecipeConfig,
    build_sft_config,
    load_recipe,
    recipe_base_id,
)
from bpo_trainer.recipe.evaluate import evaluate
from bpo_trainer.recipe.package import (
    ADAPTER_FILES,
    PrecisionCheck,
    compare_precisions,
    default_assets_dir,
    package_adapter,
)
from bpo_trainer.recipe.speed import SpeedReport, measure_speed
from bpo_trainer.recipe.train import data_summary, dev_records, dev_split, train
from bpo_trainer.sft import TRAINING_RECORD

REPORT_FILE = "report.json"
"""Written into ``work_dir``: everything the run measured; the model card is made from it."""


@dataclass(frozen=True)
class RecipeResult:
    """What :func:`run_recipe` produced (``report`` is also ``work_dir/report.json``)."""

    sft_dir: Path
    assets_dir: Path
    dev_indices: list[int]
    precision: PrecisionCheck | None
    scores: list[SystemScore]
    speed: SpeedReport | None
    card: Path
    report: Path


def _recipe_label(config: RecipeConfig) -> str:
    path = Path(config.recipe).resolve()
    return "trainer/recipes/default_optimizer.yaml" if path == RECIPE_FILE else str(path)


def run_recipe(config: RecipeConfig) -> RecipeResult:
    """Train (or reuse), package, compare precisions, evaluate, time, and write the report and
    the model card.

    Example:
        >>> config = RecipeConfig(work_dir="outputs/default-optimizer")
        >>> result = run_recipe(config)  # doctest: +SKIP
        >>> result.assets_dir.name  # doctest: +SKIP
        'default_optimizer'
    """
    recipe = load_recipe(config.recipe)
    sft_config = build_sft_config(config)
    indices = dev_split(sft_config)
    records = dev_records(sft_config, indices)
    if config.eval_limit is not None:
        records = records[: config.eval_limit]
    base = sft_config.model_name_or_path or ""
    base_id = recipe_base_id(config)
    sft_dir = train(sft_config, retrain=config.retrain)

    work = Path(config.work_dir)
    extra = {"recipe": _recipe_label(config), "dev_indices": indices}
    folders = {
        dtype: package_adapter(
            sft_dir, work / f"adapter-{dtype}", dtype=dtype, base_model=base, extra=extra
        )
        for dtype in ("float32", "float16")
    }
    precision: PrecisionCheck | None = None
    raw: list[str] | None = None
    chosen: Literal["float16", "float32"] = "float32" if config.dtype == "float32" else "float16"
    if not config.skip_eval:
        precision, by_precision = compare_precisions(
            base,
            folders["float32"],
            folders["float16"],
            records,
            max_new_tokens=config.eval_max_new_tokens,
            tolerance=config.fp16_tolerance,
            dtype=config.dtype,
            device=config.device,
        )
        chosen = precision.chosen  # type: ignore[assignment]
        raw = by_precision[chosen]

    assets = Path(config.assets_dir) if config.assets_dir else default_assets_dir()
    for name in (*ADAPTER_FILES, "README.md"):
        (assets / name).unlink(missing_ok=True)
    label = str(recipe.get("train_file"))
    if not Path(label).is_absolute():
        label = f"$BPO_SHARED_DIR/{label}"
    package_adapter(
        sft_dir, assets, dtype=chosen, base_model=base_id, extra=extra, data_label=label
    )

    scores: list[SystemScore] = []
    outputs: dict[str, list[str]] = {}
    if not config.skip_eval:
        scores, outputs = evaluate(
            base,
            assets,
            records,
            max_new_tokens=config.eval_max_new_tokens,
            device=config.device,
            raw=raw,
            base_label=base_id.rstrip("/").rsplit("/", 1)[-1],
        )
    speed = None
    if not config.skip_speed:
        speed = measure_speed(
            base,
            assets,
            [r.prompt for r in records[: config.throughput_batch]],
            max_new_tokens=config.speed_max_new_tokens,
            runs=config.speed_runs,
            device=config.device,
            first_call=config.measure_first_call
            and config.assets_dir is None
            and base_id == DEFAULT_BASE_ID,
        )
    report = {
        "base_model": base_id,
        "recipe_file": extra["recipe"],
        "recipe": recipe,
        "data": {"file": label, **data_summary(sft_config)},
        "training": json.loads((assets / TRAINING_RECORD).read_text(encoding="utf-8")),
        "precision": None if precision is None else asdict(precision),
        "scores": [s.to_dict() for s in scores],
        "speed": None if speed is None else asdict(speed),
    }
    report_path = write_report(work, report, records, outputs)
    card = write_model_card(assets, json.loads(report_path.read_text(encoding="utf-8")))
    return RecipeResult(
        sft_dir=Path(sft_dir),
        assets_dir=assets,
        dev_indices=indices,
        precision=precision,
        scores=scores,
        speed=speed,
        card=card,
        report=report_path,
    )


def write_report(
    work: Path,
    report: dict[str, Any],
    records: Sequence[DevRecord],
    outputs: dict[str, list[str]],
) -> Path:
    """Write ``report.json`` and ``dev_outputs.jsonl`` (every system's rewrite of every dev
    record) into ``work``; returns the report's path."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / REPORT_FILE
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with (work / "dev_outputs.jsonl").open("w", encoding="utf-8") as handle:
        for i, record in enumerate(records):
            row = {"index": record.index, "prompt": record.prompt, "reference": record.reference}
            row.update({name: values[i] for name, values in outputs.items()})
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
