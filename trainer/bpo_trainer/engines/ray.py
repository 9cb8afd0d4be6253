"""``bpo-train infer --engine ray``: the data set sharded over a Ray cluster with Ray Data.

The driver (the ``bpo-train`` process) keeps the output file: it sends the prompts not yet done
through ``Dataset.map_batches`` to a pool of workers, each holding one optimizer (one vLLM engine,
or the configured backend), and appends each result as it streams back. Only the driver writes,
so a result is written once; a killed run loses only the batches in flight, which the next run
(skipping the ids already written) does again.

On a cluster: ``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
then ``bpo-train infer --engine ray --ray_address auto --ray_workers N --ray_gpus_per_worker 1``
on the head. Without ``--ray_address`` (and ``RAY_ADDRESS``) Ray starts a local cluster.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bpo_integrations import FallbackReason, OptimizationResult
from bpo_trainer.errors import TrainerConfigError

if TYPE_CHECKING:
    from bpo_trainer.infer import InferConfig


class OptimizeBatch:
    """A Ray Data worker: one :class:`~bpo_integrations.BPOOptimizer` over one backend, built once
    per worker from the config, applied to each batch of prompts."""

    def __init__(self, config: dict[str, Any]) -> None:
        from bpo_trainer.infer import InferConfig, build_optimizer, worker_backend

        infer_config = InferConfig(**config)
        self.optimizer = build_optimizer(infer_config, worker_backend(infer_config))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        prompts = [str(p) for p in batch["prompt"]]
        contexts = [str(c) or None for c in batch["context"]]
        results = self.optimizer.optimize_batch(prompts, contexts=contexts)
        return {
            "key": [str(k) for k in batch["key"]],
            "optimized": [r.optimized for r in results],
            "fell_back": [bool(r.fell_back) for r in results],
            "fallback_reason": [
                r.fallback_reason.value if r.fallback_reason else "" for r in results
            ],
            "fallback_detail": [r.fallback_detail for r in results],
            "rounds": [json.dumps(list(r.rounds)) for r in results],
            "latency_s": [r.latency_s for r in results],
        }


def optimize_on_ray(
    config: InferConfig, items: Sequence[tuple[str, str, str | None]]
) -> Iterator[list[tuple[str, OptimizationResult]]]:
    """Optimize ``(key as JSON, prompt, context)`` items on Ray; yields ``(key as JSON, result)``
    batch by batch, in the order the workers finish them."""
    try:
        import ray
    except ImportError as error:
        raise TrainerConfigError(
            f"--engine ray needs Ray Data: pip install -e 'trainer[ray]' ({error})"
        ) from error
    if not ray.is_initialized():
        ray.init(
            address=config.ray_address or None,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    rows = [{"key": k, "prompt": prompt, "context": context or ""} for k, prompt, context in items]
    dataset = ray.data.from_items(rows).map_batches(
        OptimizeBatch,
        fn_constructor_kwargs={"config": dataclasses.asdict(config)},
        batch_size=config.batch_size,
        concurrency=config.ray_workers,
        num_gpus=config.ray_gpus_per_worker,
        num_cpus=config.ray_cpus_per_worker,
        batch_format="numpy",
    )
    inputs = {key: (prompt, context) for key, prompt, context in items}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield [
            (str(key), _result(*inputs[str(key)], *row))
            for key, *row in zip(
                batch["key"],
                batch["optimized"],
                batch["fell_back"],
                batch["fallback_reason"],
                batch["fallback_detail"],
                batch["rounds"],
                batch["latency_s"],
                strict=True,
            )
        ]


def _result(
    prompt: str,
    context: str | None,
    optimized: Any,
    fell_back: Any,
    reason: Any,
    detail: Any,
    rounds: Any,
    latency_s: Any,
) -> OptimizationResult:
    """A worker's row as the :class:`OptimizationResult` it was made from."""
    return OptimizationResult(
        original=prompt,
        optimized=str(optimized),
        backend="ray",
        latency_s=float(latency_s),
        context=context,
        fell_back=bool(fell_back),
        fallback_reason=FallbackReason(reason) if reason else None,
        rounds=tuple(json.loads(str(rounds))),
        fallback_detail=str(detail),
    )


def key_json(key: Any) -> str:
    """A record key as the string that travels through Ray (ints and strings stay apart)."""
    return json.dumps(key, sort_keys=True)
