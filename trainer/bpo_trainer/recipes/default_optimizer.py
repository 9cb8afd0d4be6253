"""The default optimizer of ``bpo-integrations``, reproduced by one command.

::

    python -m bpo_trainer.recipes.default_optimizer            # train, package, evaluate, card
    python -m bpo_trainer.recipes.default_optimizer --help     # every option

The training settings are ``trainer/recipes/default_optimizer.yaml``; the steps are the modules
of :mod:`bpo_trainer.recipe` (each usable on its own); the model card is written from the run's
``report.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.quality import quality_table
from bpo_trainer.recipe import RecipeConfig, dev_split, run_recipe

__all__ = ["RecipeConfig", "dev_split", "main", "run_recipe"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bpo_trainer.recipes.default_optimizer [--option value ...] [--config FILE]``."""
    from trl import TrlParser

    parser = TrlParser(
        RecipeConfig,
        prog="python -m bpo_trainer.recipes.default_optimizer",
        description="Train, package, evaluate and document the default BPO optimizer.",
    )
    (config, *_) = parser.parse_args_and_config(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = run_recipe(config)
    except TrainerConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    print(quality_table(result.scores) if result.scores else "(quality not evaluated)")
    if result.speed is not None:
        print(json.dumps(asdict(result.speed), indent=2))
    print(f"adapter and model card: {result.assets_dir}; report: {result.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
