"""The engine fields shared by the configs of ``bpo-train infer`` and ``bpo-train eval``.

Both stages optimize many prompts; :class:`EngineOptions` says what runs the optimizer: the
configured backend, vLLM's offline engine in this process, or a Ray cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from bpo_trainer.errors import TrainerConfigError

ENGINES = ("backend", "vllm", "ray")


@dataclass
class EngineOptions:
    """Which engine runs the optimizer, and the settings of the vLLM and Ray engines."""

    engine: Literal["backend", "vllm", "ray"] = field(
        default="backend",
        metadata={
            "help": "'backend': the configured backend; 'vllm': vLLM's offline engine in this "
            "process (LLM.generate, a LoRA adapter through LoRARequest); 'ray': the prompts "
            "sharded over a Ray cluster with Ray Data, one optimizer per worker (--ray_*)."
        },
    )
    dtype: str | None = field(
        default=None, metadata={"help": "vllm: 'bfloat16', 'float16' or 'float32'."}
    )
    vllm_max_model_len: int | None = field(
        default=None,
        metadata={
            "help": "vllm: the engine's max_model_len (prompt + rewrite); unset: the model's."
        },
    )
    vllm_enforce_eager: bool = field(
        default=False,
        metadata={"help": "vllm: no graph compilation (starts in seconds, decodes slower)."},
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "ray: the cluster ('auto', 'ray://host:10001'); unset: $RAY_ADDRESS or local."
        },
    )
    ray_workers: int = field(default=1, metadata={"help": "ray: workers, one optimizer each."})
    ray_worker_engine: Literal["vllm", "backend"] = field(
        default="vllm",
        metadata={"help": "ray: what each worker runs: a vLLM engine, or the configured backend."},
    )
    ray_gpus_per_worker: float = field(
        default=0.0, metadata={"help": "ray: GPUs per worker (1 for a vLLM engine on a GPU)."}
    )
    ray_cpus_per_worker: float = field(default=1.0, metadata={"help": "ray: CPUs per worker."})

    def validate_engine(self) -> None:
        """Check the engine choice and the worker count; raises :class:`TrainerConfigError`."""
        if self.engine not in ENGINES:
            raise TrainerConfigError(
                f"engine={self.engine!r} is not supported: choose 'backend', 'vllm' or 'ray'"
            )
        if self.ray_worker_engine not in ("vllm", "backend"):
            raise TrainerConfigError(
                f"ray_worker_engine={self.ray_worker_engine!r} is not supported: choose 'vllm' "
                "or 'backend'"
            )
        if self.ray_workers < 1:
            raise TrainerConfigError(f"ray_workers must be >= 1, got {self.ray_workers}")

    def engine_options(self) -> dict[str, Any]:
        """These fields as keyword arguments (to build another stage's config)."""
        return {f.name: getattr(self, f.name) for f in fields(EngineOptions)}
