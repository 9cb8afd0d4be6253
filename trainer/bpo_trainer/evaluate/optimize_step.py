"""Step 1 of the evaluation: the optimized prompt of each round for every test prompt, from a
:class:`~bpo_integrations.BPOOptimizer`, a file of optimized prompts, or the prompt itself
(``optimizer: none``), appended to ``optimized.jsonl``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_integrations.jsonl import JsonlWriter
from bpo_integrations.template import join_context
from bpo_trainer.evaluate.config import EvalConfig, settings_hash
from bpo_trainer.evaluate.optimized_file import load_optimized_file
from bpo_trainer.evaluate.runtime import CallLimiter, RunState, records_by_key
from bpo_trainer.evaluate.testsets import EvalPrompt

if TYPE_CHECKING:
    from bpo_integrations import BPOOptimizer, OptimizationResult

OPTIMIZED_FILE = "optimized.jsonl"


@dataclass(frozen=True)
class Optimized:
    """The optimized prompts of one test prompt."""

    rounds: tuple[str, ...]
    """The prompt the answering model gets for each round (context joined where it applies)."""
    fell_back: bool = False


def build_optimizer(config: EvalConfig) -> BPOOptimizer:
    """The optimizer ``config`` describes (``optimizer``, ``optimizer_url``, ...)."""
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import create

    remote = config.optimizer != "local"
    backend = create(
        config.optimizer,
        endpoint=config.optimizer_url if remote else None,
        model=None if config.optimizer == "tgi" else config.optimizer_model,
        timeout=config.optimizer_timeout if remote else None,
    )
    return BPOOptimizer(
        backend,
        mode=config.optimizer_mode,  # type: ignore[arg-type]
        timeout=config.optimizer_timeout,
        max_retries=config.max_retries,
        max_concurrency=config.concurrency,
    )


def _optimizer_identity(config: EvalConfig, optimizer: BPOOptimizer | None) -> Hashable:
    if config.optimizer == "file":
        digest = hashlib.sha256(Path(config.optimized_file or "").read_bytes()).hexdigest()
        return ("file", digest)
    if config.optimizer == "none":
        return ("none",)
    if config.engine != "backend" and optimizer is None:
        from bpo_trainer.evaluate.engine_step import engine_identity

        return engine_identity(config)
    if optimizer is not None:
        return (
            "custom",
            config.optimizer_model or optimizer.backend.name,
            optimizer.settings.cache_key(),
        )
    return (config.optimizer, config.optimizer_url, config.optimizer_model, config.optimizer_mode)


def _round_prompts(config: EvalConfig, item: EvalPrompt, rewrites: Sequence[str]) -> list[str]:
    if config.context_mode == "separate":
        return [join_context(r, item.context).strip() for r in rewrites]
    return [r.strip() for r in rewrites]


async def optimize_step(
    run: RunState[EvalConfig], items: Sequence[EvalPrompt], optimizer: BPOOptimizer | None
) -> dict[str, Optimized]:
    """The optimized prompts of ``items`` by :attr:`EvalPrompt.key`: replayed from
    ``optimized.jsonl`` where it has them, else made and appended. ``optimizer`` replaces the
    one the config describes."""
    config = run.config
    step_hash = settings_hash(
        "optimize",
        _optimizer_identity(config, optimizer),
        config.rounds,
        config.context_mode,
    )
    path = run.out / OPTIMIZED_FILE
    done = records_by_key(path)
    keys = {
        item.key: settings_hash(step_hash, item.testset, item.id, item.prompt) for item in items
    }
    results: dict[str, Optimized] = {}
    todo = []
    for item in items:
        record = done.get(keys[item.key])
        if record is not None:
            results[item.key] = Optimized(tuple(record["round_prompts"]), record["fell_back"])
        else:
            todo.append(item)
    if not todo:
        return results

    def record_for(item: EvalPrompt, rewrites: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "key": keys[item.key],
            "testset": item.testset,
            "id": item.id,
            "original": item.prompt,
            "rounds": rewrites,
            "round_prompts": _round_prompts(config, item, rewrites),
            **extra,
        }

    with JsonlWriter(path, fsync=False) as writer:
        if config.optimizer in ("file", "none"):
            from_file = load_optimized_file(config, todo) if config.optimizer == "file" else {}
            for item in todo:
                if config.optimizer == "none":
                    source = item.prompt if config.context_mode == "inline" else item.instruction
                    rewrites = [source] * config.rounds
                else:
                    rewrites = from_file[item.key]
                record = record_for(item, rewrites, fell_back=False)
                writer.write(record)
                results[item.key] = Optimized(tuple(record["round_prompts"]))
            return results

        inline = config.context_mode == "inline"

        def finish(item: EvalPrompt, source: str, result: OptimizationResult) -> None:
            run.new_calls["optimize"] += 1
            reason = result.fallback_reason
            if result.fell_back and reason is not None and reason.is_backend_failure:
                run.fail("optimize", RuntimeError(result.fallback_message))
                return
            rewrites = list(result.rounds) or [source]
            completed = len(result.rounds)
            rewrites += [rewrites[-1]] * (config.rounds - len(rewrites))
            record = record_for(
                item,
                rewrites,
                fell_back=result.fell_back,
                fallback_reason=result.fallback_message,
                rounds_completed=completed,
                latency_s=round(result.latency_s, 4),
            )
            writer.write(record)
            results[item.key] = Optimized(tuple(record["round_prompts"]), result.fell_back)

        if config.engine != "backend":
            from bpo_trainer.evaluate.engine_step import optimize_on_engine

            optimize_on_engine(run, todo, optimizer, finish)
            return results

        owned = optimizer is None
        optimizer = optimizer or build_optimizer(config)
        limiter = CallLimiter(config.concurrency, config.requests_per_second)
        try:
            with run.progress_task("optimize", len(todo)) as advance:

                async def one(item: EvalPrompt) -> None:
                    source = item.prompt if inline else item.instruction
                    try:
                        result = await run.call(
                            limiter,
                            lambda: optimizer.aoptimize(
                                source,
                                context=None if inline else item.context,
                                iterations=config.rounds,
                            ),
                        )
                    except Exception as error:
                        run.fail("optimize", error)
                        return
                    finally:
                        advance()
                    finish(item, source, result)

                await asyncio.gather(*(one(item) for item in todo))
        finally:
            if owned:
                optimizer.close()
    return results
