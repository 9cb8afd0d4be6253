"""Every ``>>>`` example in ``bpo_integrations`` runs as written.

A module whose optional extra is not installed is skipped, with the missing package named; the
examples marked ``+SKIP`` need what a test run does not have (a GGUF model download, a GPU, a
server that stays up).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import bpo_integrations

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no fetch at import

PACKAGE_DIR = Path(bpo_integrations.__file__).parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(bpo_integrations.__path__, "bpo_integrations.")
)


def _missing_extra(error: BaseException) -> str | None:
    """The optional package whose absence made the import fail, if that is why it failed."""
    cause: BaseException | None = error
    while cause is not None:
        name = getattr(cause, "name", None)
        if isinstance(cause, ModuleNotFoundError) and name and not name.startswith("bpo_"):
            return name
        cause = cause.__cause__
    return None


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing = _missing_extra(error)
        if missing is None:
            raise
        pytest.skip(f"{name} needs {missing}, which is not installed: {error}")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _import(name)
    if name == "bpo_integrations.backends.tgi":
        from huggingface_hub import constants

        # HF_HUB_OFFLINE=1 (conftest.py) makes InferenceClient refuse even the local server.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # failures go to stdout
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_with_examples_is_collected() -> None:
    with_examples = sorted(
        _module_name(path)
        for path in PACKAGE_DIR.rglob("*.py")
        if ">>>" in path.read_text(encoding="utf-8")
    )
    assert with_examples, "no module with examples found"
    assert set(with_examples) <= set(MODULES), set(with_examples) - set(MODULES)
    for name in with_examples:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if _missing_extra(error) is None:
                raise
            continue
        examples = [e for t in doctest.DocTestFinder().find(module) for e in t.examples]
        assert examples, f"{name} has '>>>' lines that doctest does not find"
