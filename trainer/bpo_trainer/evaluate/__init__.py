"""The ``eval`` stage: the paper's pairwise LLM-judge evaluation of an optimizer.

For every test prompt: optimize it (any ``bpo_integrations`` backend, or a file of optimized
prompts; optionally k rounds), answer the original and the optimized prompt with the answering
model, and ask a judge model which answer is better (MT-bench ``pair-v2`` or AlpacaEval's ranking
prompt), with the answers' order drawn at random and recorded. The report gives win / tie / lose
rates and ΔWR (win rate minus lose rate) with a bootstrap interval, per test set, per category and
per round, as markdown, JSON and PNG charts.

Example:
    >>> from bpo_trainer.evaluate import EvalConfig, run_eval
    >>> config = EvalConfig(
    ...     testsets=["vicuna", "dolly"], data_dir="../shared/data/bpo", sample_size=50,
    ...     optimizer="tgi", optimizer_url="http://localhost:8080",
    ...     answer_url="http://localhost:8000/v1", answer_model="meta-llama/Llama-2-7b-chat-hf",
    ...     judge_model="gpt-4o", output_dir="runs/eval-llama2",
    ... )
    >>> result = run_eval(config)  # doctest: +SKIP
    >>> result.report_path  # doctest: +SKIP
    PosixPath('runs/eval-llama2/report.md')
"""

from __future__ import annotations

from bpo_trainer.evaluate.chat import (
    ChatModel,
    ChatReply,
    LocalChat,
    OpenAIChat,
    SamplingParams,
    TGIChat,
)
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.judge import JudgePrompt, Verdict, get_judge_prompt
from bpo_trainer.evaluate.pipeline import EvalResult, arun_eval, run_eval
from bpo_trainer.evaluate.report import WinRate, win_rate
from bpo_trainer.evaluate.testsets import EvalPrompt, load_testset

__all__ = [
    "ChatModel",
    "ChatReply",
    "EvalConfig",
    "EvalPrompt",
    "EvalResult",
    "JudgePrompt",
    "LocalChat",
    "OpenAIChat",
    "SamplingParams",
    "TGIChat",
    "Verdict",
    "WinRate",
    "arun_eval",
    "get_judge_prompt",
    "load_testset",
    "run_eval",
    "win_rate",
]
