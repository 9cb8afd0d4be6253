"""Every ``>>>`` example in ``bpo_trainer`` runs as written (those marked ``+SKIP`` need a GPU, a
hub model or a long run)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import bpo_trainer
import pytest

MODULES = sorted(m.name for m in pkgutil.walk_packages(bpo_trainer.__path__, "bpo_trainer."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # failures go to stdout
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_collected() -> None:
    counted = sum(
        len(
            [
                e
                for t in doctest.DocTestFinder().find(importlib.import_module(n))
                for e in t.examples
            ]
        )
        for n in MODULES
    )
    assert counted > 50 and "bpo_trainer.retry" in MODULES and "bpo_trainer.recipe.card" in MODULES
