"""The evaluation's optimizing step on ``bpo-train infer``'s engines (``--engine vllm|ray``).

The eval config is turned into the :class:`~bpo_trainer.infer.InferConfig` of the same optimizer,
and the prompts go through :func:`bpo_trainer.infer.optimized_batches`: whole batches on vLLM's
offline engine, or sharded over a Ray cluster. The pipeline writes each result as its batch comes
back, so a stopped run keeps every finished batch and the next run optimizes only the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from bpo_integrations import GenerationSettings, OptimizationResult
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.runtime import RunState
from bpo_trainer.evaluate.testsets import EvalPrompt
from bpo_trainer.infer import InferConfig, optimized_batches

if TYPE_CHECKING:
    from bpo_integrations import BPOOptimizer


def optimizer_model_and_adapter(config: EvalConfig) -> tuple[str | None, str | None]:
    """The optimizer's model and adapter; for the local model with no ``optimizer_model``, the
    package's default model and its shipped BPO adapter."""
    if config.optimizer != "local" or config.optimizer_model is not None:
        return config.optimizer_model, config.optimizer_adapter
    from bpo_integrations.models import default_adapter, ensure_default_model

    adapter = config.optimizer_adapter or default_adapter()
    return str(ensure_default_model()), None if adapter is None else str(adapter)


def engine_infer_config(config: EvalConfig) -> InferConfig:
    """The ``infer`` config that optimizes as ``config`` says (its engine, model, mode, rounds)."""
    model, adapter = optimizer_model_and_adapter(config)
    return InferConfig(
        **config.engine_options(),
        backend=config.optimizer,  # type: ignore[arg-type]  # validated: local, tgi or openai
        model=model or "tgi",  # tgi serves its own model
        adapter=adapter,
        endpoint=config.optimizer_url,
        mode=config.optimizer_mode,
        max_new_tokens=GenerationSettings().max_new_tokens,
        iterations=config.rounds,
        batch_size=config.concurrency,
        max_concurrency=config.concurrency,
        prompt_field="prompt",
        context_field="context",
        progress=False,
    )


def engine_identity(config: EvalConfig) -> Hashable:
    """What keys the rewrites of an engine run in the step file (the engine's model and mode)."""
    infer = engine_infer_config(config)
    worker = infer.ray_worker_engine if infer.engine == "ray" else infer.engine
    return (config.engine, worker, config.optimizer, infer.model, infer.adapter, infer.mode)


def optimize_on_engine(
    run: RunState[EvalConfig],
    todo: Sequence[EvalPrompt],
    optimizer: BPOOptimizer | None,
    finish: Callable[[EvalPrompt, str, OptimizationResult], None],
) -> None:
    """Optimize ``todo`` on ``run.config.engine``; ``finish(item, source, result)`` records each
    result as its batch comes back.

    The batches run in the calling thread: vLLM starts its engine where it is first used, and it
    wants the main thread.
    """
    config = run.config
    if optimizer is not None:
        raise TrainerConfigError(
            f"engine={config.engine!r} builds the optimizer from the config: pass no optimizer, "
            "or use engine='backend'"
        )
    inline = config.context_mode == "inline"
    by_key = {str(index): item for index, item in enumerate(todo)}
    pending = [
        (
            str(index),
            {"prompt": item.prompt, "context": None}
            if inline
            else {"prompt": item.instruction, "context": item.context},
        )
        for index, item in enumerate(todo)
    ]
    batches = optimized_batches(engine_infer_config(config), pending, None)
    with run.progress_task("optimize", len(todo)) as advance:
        try:
            for batch in batches:
                for done in batch:
                    finish(by_key[done.key], done.result.original, done.result)
                    advance()
        finally:
            batches.close()
