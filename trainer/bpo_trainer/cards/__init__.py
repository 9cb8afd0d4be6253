"""Model cards: ``huggingface_hub.ModelCard`` from the Jinja templates beside this module.

A card's numbers come from a run's own record (``bpo_training.json`` for ``export``, the recipe's
``report.json`` for the default optimizer); the templates hold the prose.

Example:
    >>> from huggingface_hub import ModelCardData
    >>> card = render_card("export.md", ModelCardData(base_model="x"), name="demo", record={},
    ...                    lora=False, generation_json="{}", version="0")
    >>> card.data.base_model, card.text.splitlines()[1]
    ('x', '# demo')
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = Path(__file__).resolve().parent
"""The folder of the card templates (``*.md``, Jinja)."""


def render_card(template: str, data: ModelCardData, **values: Any) -> ModelCard:
    """``ModelCard.from_template`` with the template ``TEMPLATES / template`` and ``values``."""
    from huggingface_hub import ModelCard

    return ModelCard.from_template(data, template_path=str(TEMPLATES / template), **values)
