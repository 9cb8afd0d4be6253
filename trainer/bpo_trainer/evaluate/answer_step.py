"""Step 2 of the evaluation: the answering model's answer to the original prompt and to the
optimized prompt of each round, appended to ``answers.jsonl``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bpo_trainer.evaluate.chat import ChatModel, ChatReply, SamplingParams
from bpo_trainer.evaluate.config import EvalConfig, settings_hash
from bpo_trainer.evaluate.optimize_step import Optimized
from bpo_trainer.evaluate.runtime import ChatJob, RunState
from bpo_trainer.evaluate.testsets import EvalPrompt

ANSWERS_FILE = "answers.jsonl"

_Variant = tuple[EvalPrompt, str, str]
"""A test prompt, the variant's name (``original``, ``round-1``, ...) and the text answered."""


def _variants(item: EvalPrompt, optimized: Optimized) -> list[tuple[str, str]]:
    pairs = [("original", item.prompt)]
    pairs += [(f"round-{i}", text) for i, text in enumerate(optimized.rounds, start=1)]
    return pairs


async def answer_step(
    run: RunState[EvalConfig],
    items: Sequence[EvalPrompt],
    optimized: dict[str, Optimized],
    model: ChatModel,
) -> dict[tuple[str, str], str]:
    """Answers by (:attr:`EvalPrompt.key`, variant): ``original`` and ``round-1`` ...
    ``round-k``; a prompt without optimized prompts is not answered."""
    config = run.config
    params = SamplingParams(
        max_tokens=config.answer_max_tokens,
        temperature=config.answer_temperature,
        top_p=config.answer_top_p,
    )
    step_hash = settings_hash("answer", model.identity(), asdict(params))
    jobs: list[ChatJob[_Variant]] = []
    for item in items:
        if item.key not in optimized:
            continue
        for variant, text in _variants(item, optimized[item.key]):
            key = settings_hash(step_hash, item.testset, item.id, variant, text)
            jobs.append(ChatJob(key, [{"role": "user", "content": text}], (item, variant, text)))

    def record(job: ChatJob[_Variant], reply: ChatReply) -> dict[str, Any]:
        item, variant, text = job.item
        return {
            "testset": item.testset,
            "id": item.id,
            "variant": variant,
            "prompt": text,
            **reply.answer_fields(),
        }

    records = await run.chat_step("answer", run.out / ANSWERS_FILE, jobs, model, params, record)
    by_key = {r["key"]: r for r in records}
    return {
        (job.item[0].key, job.item[1]): by_key[job.key]["answer"]
        for job in jobs
        if job.key in by_key
    }
