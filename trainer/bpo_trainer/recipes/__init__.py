"""Recipes: one command that reproduces a shipped model end to end (train, package, evaluate).

- :mod:`bpo_trainer.recipes.default_optimizer`: the default optimizer of ``bpo-integrations``
  (``python -m bpo_trainer.recipes.default_optimizer``), configured by
  ``trainer/recipes/default_optimizer.yaml``.
"""
