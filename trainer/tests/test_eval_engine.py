"""``bpo-train eval --engine vllm|ray``: the flags reach ``bpo-train infer``'s engines.

The engine itself runs in ``test_eval_engine_vllm.py`` (``make test-vllm``); here the parsed
command builds the same backend ``infer`` would (the vLLM engine starts only on first use, so this
needs no vLLM), and a combination that cannot work is refused with the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpo_trainer.cli import STAGES, parse_stage_args
from bpo_trainer.engines.vllm import VLLMEngineBackend
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.evaluate import EvalConfig
from bpo_trainer.evaluate.engine_step import engine_identity, engine_infer_config
from bpo_trainer.infer import make_backend

from bpo_integrations.models import default_adapter_path, ensure_default_model


def parse_eval(*argv: str) -> EvalConfig:
    config = parse_stage_args(STAGES["eval"], list(argv))
    assert isinstance(config, EvalConfig)
    return config


def test_engine_vllm_builds_the_vllm_engine_backend(tmp_path: Path) -> None:
    model, adapter = tmp_path / "base", tmp_path / "adapter"
    config = parse_eval(
        "--engine", "vllm", "--optimizer_model", str(model), "--optimizer_adapter", str(adapter),
        "--dtype", "float32", "--vllm_max_model_len", "2048", "--vllm_enforce_eager", "true",
        "--concurrency", "4", "--optimizer_mode", "greedy", "--rounds", "2",
    )  # fmt: skip
    infer = engine_infer_config(config)
    assert (infer.engine, infer.mode, infer.iterations, infer.batch_size) == (
        "vllm",
        "greedy",
        2,
        4,
    )
    backend = make_backend(infer)
    assert isinstance(backend, VLLMEngineBackend)
    assert (backend.model, backend.adapter, backend.dtype) == (str(model), str(adapter), "float32")
    assert (backend.max_model_len, backend.max_batch_size) == (2048, 4)
    assert backend.engine_kwargs == {"enforce_eager": True}


def test_engine_vllm_defaults_to_the_package_optimizer() -> None:
    infer = engine_infer_config(parse_eval("--engine", "vllm"))
    assert Path(infer.model) == ensure_default_model()
    assert Path(infer.adapter or "") == default_adapter_path()


def test_the_engine_keys_the_cached_rewrites() -> None:
    on_vllm = engine_identity(parse_eval("--engine", "vllm"))
    on_ray = engine_identity(parse_eval("--engine", "ray", "--ray_workers", "2"))
    greedy = engine_identity(parse_eval("--engine", "vllm", "--optimizer_mode", "greedy"))
    assert len({on_vllm, on_ray, greedy}) == 3


def test_ray_workers_may_run_the_configured_backend() -> None:
    config = parse_eval(
        "--engine", "ray", "--ray_worker_engine", "backend", "--ray_workers", "3",
        "--optimizer", "tgi", "--optimizer_url", "http://127.0.0.1:8080",
    )  # fmt: skip
    infer = engine_infer_config(config)
    assert (infer.backend, infer.endpoint, infer.ray_workers) == (
        "tgi",
        "http://127.0.0.1:8080",
        3,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--engine", "vllm", "--optimizer", "tgi", "--optimizer_url", "http://h:8080"],
            "engine='vllm' runs the optimizer model on a vLLM engine",
        ),
        (
            ["--engine", "ray", "--optimizer", "file", "--optimized_file", "x.jsonl"],
            "optimizer='file' cannot be used with it",
        ),
        (["--engine", "ray", "--ray_workers", "0"], "ray_workers must be >= 1"),
    ],
)
def test_impossible_engine_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(TrainerConfigError, match=message):
        parse_eval(*argv)


def test_an_unknown_engine_from_python_is_refused() -> None:
    with pytest.raises(TrainerConfigError, match="engine='spark' is not supported"):
        EvalConfig(engine="spark")  # type: ignore[arg-type]
