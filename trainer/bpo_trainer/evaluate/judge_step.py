"""Step 3 of the evaluation: the judge's verdict on each pair of answers (the original prompt's
and a round's optimized prompt's), in the seeded order or in both, appended to
``judgments.jsonl``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bpo_trainer.evaluate.chat import ChatModel, ChatReply, SamplingParams
from bpo_trainer.evaluate.config import EvalConfig, settings_hash
from bpo_trainer.evaluate.judge import JudgePrompt, get_judge_prompt
from bpo_trainer.evaluate.outcomes import optimized_position, outcome_for_optimized
from bpo_trainer.evaluate.runtime import ChatJob, RunState
from bpo_trainer.evaluate.testsets import EvalPrompt

JUDGMENTS_FILE = "judgments.jsonl"

_Pair = tuple[EvalPrompt, int, str]
"""A test prompt, the round judged and where the optimized prompt's answer is shown."""


def _judge_params(config: EvalConfig, prompt: JudgePrompt) -> SamplingParams:
    max_tokens = config.judge_max_tokens or prompt.default_max_tokens
    return SamplingParams(max_tokens=max_tokens, temperature=config.judge_temperature)


async def judge_step(
    run: RunState[EvalConfig],
    items: Sequence[EvalPrompt],
    answers: dict[tuple[str, str], str],
    model: ChatModel,
) -> tuple[list[dict[str, Any]], int]:
    """The judgment records of this evaluation, and the number of pairs lacking an answer."""
    config = run.config
    prompt = get_judge_prompt(config.judge_prompt)
    params = _judge_params(config, prompt)
    step_hash = settings_hash("judge", model.identity(), prompt.name, asdict(params))
    jobs: list[ChatJob[_Pair]] = []
    missing = 0
    for item in items:
        for round_index in range(1, config.rounds + 1):
            original = answers.get((item.key, "original"))
            improved = answers.get((item.key, f"round-{round_index}"))
            if original is None or improved is None:
                missing += 1
                continue
            positions = (
                ["A", "B"]
                if config.both_orders
                else [optimized_position(config.seed, item.testset, item.id, round_index)]
            )
            for position in positions:
                key = settings_hash(
                    step_hash,
                    item.testset,
                    item.id,
                    round_index,
                    position,
                    item.prompt,
                    original,
                    improved,
                )
                answer_a, answer_b = (
                    (improved, original) if position == "A" else (original, improved)
                )
                messages = prompt.messages(item.prompt, answer_a, answer_b)
                jobs.append(ChatJob(key, messages, (item, round_index, position)))

    def record(job: ChatJob[_Pair], reply: ChatReply) -> dict[str, Any]:
        item, round_index, position = job.item
        verdict = prompt.parse(reply.text)
        return {
            "testset": item.testset,
            "id": item.id,
            "category": item.category,
            "round": round_index,
            "optimized_position": position,
            "judge_prompt": prompt.name,
            "judgment": reply.text,
            "winner": verdict.winner,
            "parse_error": verdict.error,
            "outcome": outcome_for_optimized(verdict.winner, position),
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }

    path = run.out / JUDGMENTS_FILE
    return await run.chat_step("judge", path, jobs, model, params, record), missing
