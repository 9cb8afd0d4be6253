"""Fixtures shared by the middleware's and the trainer's tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DIR = Path(os.environ.get("BPO_SHARED_DIR", Path(__file__).parent.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (or ``$BPO_SHARED_DIR``); skips when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DIR} (set BPO_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def bpo_val_records(shared_dir: Path) -> list[dict[str, Any]]:
    """The 300 real BPO training records with every stage kept."""
    path = shared_dir / "data" / "bpo" / "val.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tgi_openapi(shared_dir: Path) -> dict[str, Any]:
    """TGI's published OpenAPI schema, the contract for TGI clients and servers."""
    path = shared_dir / "tgi" / "openapi.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Llama model and tokenizer, saved once per test session."""
    pytest.importorskip("torch")
    from bpo_integrations.testing.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
