"""Model cards: ``huggingface_hub.ModelCard`` from the Jinja templates beside this module.

A card's numbers come from a run's own record (``bpo_training.json`` for ``export``, the recipe's
``report.json`` for the default optimizer); the templates hold the prose.

Example:
    >>> card = render_card("export.md", base_model="x", library_name="transformers", tags=["bpo"],
    ...                    name="demo", record={}, lora=False, generation_json="{}", version="0")
    >>> card.data.base_model, card.data.pipeline_tag, card.text.splitlines()[1]
    ('x', 'text-generation', '# demo')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

TEMPLATES = Path(__file__).resolve().parent
"""The folder of the card templates (``*.md``, Jinja)."""


def render_card(
    template: str, *, base_model: str, library_name: str, tags: Sequence[str], **values: Any
) -> ModelCard:
    """``ModelCard.from_template`` of the template ``TEMPLATES / template`` with ``values``, for
    a text-generation model fine-tuned from ``base_model``."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=base_model,
        library_name=library_name,
        pipeline_tag="text-generation",
        tags=list(tags),
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATES / template), **values)
