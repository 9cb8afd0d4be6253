"""Importing the middleware must stay light: no torch, and no integration pulls in another."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "langchain", "langchain_core", "llama_index", "openai")


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_core_imports_no_heavy_library() -> None:
    modules = imported_after("import bpo_integrations, bpo_integrations.backends")
    assert not modules & set(HEAVY)


@pytest.mark.parametrize(
    ("integration", "forbidden"),
    [
        ("bpo_integrations.langchain", {"llama_index", "torch"}),
        ("bpo_integrations.llama_index", {"langchain", "langchain_core", "torch"}),
    ],
)
def test_integrations_do_not_require_each_other(integration: str, forbidden: set[str]) -> None:
    pytest.importorskip(integration)
    assert not imported_after(f"import {integration}") & forbidden
