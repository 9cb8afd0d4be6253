"""The evaluation stage's configuration, mirrored field by field by ``bpo-train eval``."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bpo_trainer.engines.options import EngineOptions
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.evaluate.testsets import resolve_data_dir

BUILTIN_TESTSETS = ("vicuna", "dolly", "self_instruct")
OPTIMIZERS = ("tgi", "openai", "local", "file", "none")
CHAT_BACKENDS = ("openai", "tgi", "local")
CONTEXT_MODES = ("inline", "separate")
JUDGE_PROMPTS = ("pair-v2", "alpaca-ranking")


@dataclass
class EvalConfig(EngineOptions):
    """Settings of ``bpo-train eval``: the paper's pairwise LLM-judge comparison of the answers to
    the original and to the optimized prompts.

    The defaults are the reference's: answers sampled with temperature 0.7, top_p 1.0 and up to
    2048 new tokens (``thu-coai/BPO`` ``src/inference/llama2_infer.py``), a judge at temperature 0
    with MT-bench's ``pair-v2`` prompt (``src/evaluation/gpt4_score.py``), and a seeded random draw
    of which answer the judge sees first.

    ``engine`` runs the optimizing step as ``bpo-train infer`` does: ``"vllm"`` on vLLM's offline
    engine in this process (``optimizer_model`` + ``optimizer_adapter``, batches of
    ``concurrency`` prompts), ``"ray"`` sharded over a Ray cluster (the ``ray_*`` fields).

    Example:
        >>> config = EvalConfig(testsets=["vicuna"], answer_model="llama-2-7b-chat",
        ...                     judge_model="gpt-4o", optimizer="file",
        ...                     optimized_file="vicuna_optimized.jsonl")
        >>> config.validate().judge_prompt
        'pair-v2'
    """

    output_dir: str = field(
        default="runs/eval",
        metadata={
            "help": "Folder of the resumable step files (optimized/answers/judgments .jsonl), "
            "report.md, summary.json and the PNG charts. Re-running with the same settings "
            "makes no new calls."
        },
    )
    testsets: list[str] = field(
        default_factory=lambda: list(BUILTIN_TESTSETS),
        metadata={
            "help": "Test sets: 'vicuna', 'dolly', 'self_instruct' (the paper's, read from "
            "--data-dir), or paths to .jsonl/.json files of prompts (fields 'prompt', 'text' or "
            "'instruction' [+ 'context']; optional 'id' and 'category')."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding vicuna_eval.jsonl, dolly_eval.json and self_instruct_eval.json "
            "(default: $BPO_SHARED_DIR/data/bpo, else ../shared/data/bpo)."
        },
    )
    sample_size: int | None = field(
        default=None,
        metadata={"help": "Evaluate a seeded random sample of this many prompts per test set."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the sample, of the answer-order draws and of the bootstrap."},
    )

    optimizer: Literal["local", "tgi", "openai", "file", "none"] = field(
        default="local",
        metadata={
            "help": "Where optimized prompts come from: 'tgi', 'openai' or 'local' (a "
            "bpo_integrations backend), 'file' (--optimized-file) or 'none' (original prompts: "
            "an A/A check of the judge)."
        },
    )
    optimizer_url: str | None = field(
        default=None,
        metadata={"help": "The optimizer server's URL (tgi: the server root; openai: .../v1)."},
    )
    optimizer_model: str | None = field(
        default=None,
        metadata={
            "help": "The optimizer model: the served name (openai), a folder or hub id (local; "
            "default: the package's default BPO model), or a label naming a custom optimizer "
            "passed from Python (it keys the cache)."
        },
    )
    optimizer_adapter: str | None = field(
        default=None,
        metadata={
            "help": "local, --engine vllm: a LoRA adapter folder applied on top of "
            "--optimizer_model (default with no optimizer_model: the package's BPO adapter)."
        },
    )
    optimized_file: str | None = field(
        default=None,
        metadata={
            "help": "With --optimizer file: a .jsonl/.json of already optimized prompts, matched "
            "by 'id' (and 'testset') or by the original 'prompt'; the rewrite is in "
            "'optimized_prompt', 'optimized' or 'rounds' (a list, one per round)."
        },
    )
    optimizer_mode: Literal["stable", "aggressive", "greedy"] = field(
        default="stable",
        metadata={"help": "The optimizer's decoding: 'stable', 'aggressive' or 'greedy'."},
    )
    rounds: int = field(
        default=1,
        metadata={
            "help": "Iterative optimization rounds (the paper's Figure 3 uses 1 to 5); every round "
            "is answered and judged against the original."
        },
    )
    context_mode: Literal["inline", "separate"] = field(
        default="inline",
        metadata={
            "help": "'inline': the optimizer rewrites instruction + newline + context, as the BPO "
            "model was trained; 'separate': it rewrites the instruction and the context is "
            "appended untouched (the middleware's way)."
        },
    )
    optimizer_timeout: float = field(
        default=120.0,
        metadata={
            "help": "Seconds the optimizer may take for one prompt, all rounds (--engine "
            "backend; the vllm and ray engines finish each batch)."
        },
    )

    answer_backend: Literal["openai", "tgi", "local"] = field(
        default="openai",
        metadata={
            "help": "The answering model's API: 'openai' (any OpenAI-compatible endpoint), 'tgi' "
            "(huggingface_hub chat_completion) or 'local' (transformers, chat template)."
        },
    )
    answer_url: str | None = field(
        default=None,
        metadata={"help": "The answering model's endpoint (openai: .../v1; tgi: server root)."},
    )
    answer_model: str = field(
        default="gpt-3.5-turbo",
        metadata={"help": "The answering model's name, or a folder / hub id with 'local'."},
    )
    answer_api_key_env: str = field(
        default="ANSWER_API_KEY",
        metadata={
            "help": "Environment variable holding the answering endpoint's API key (with no "
            "answer_url, OPENAI_API_KEY is used when it is unset)."
        },
    )
    answer_max_tokens: int = field(
        default=2048, metadata={"help": "Maximum new tokens of an answer (reference: 2048)."}
    )
    answer_temperature: float = field(
        default=0.7, metadata={"help": "Answer sampling temperature (reference: 0.7)."}
    )
    answer_top_p: float = field(
        default=1.0, metadata={"help": "Answer nucleus sampling top_p (reference: 1.0)."}
    )

    judge_backend: Literal["openai", "tgi", "local"] = field(
        default="openai",
        metadata={"help": "The judge model's API: 'openai', 'tgi' or 'local'."},
    )
    judge_url: str | None = field(
        default=None, metadata={"help": "The judge's endpoint (openai: .../v1; tgi: root)."}
    )
    judge_model: str = field(
        default="gpt-4", metadata={"help": "The judge model (the paper: gpt-4, claude-v1.3)."}
    )
    judge_api_key_env: str = field(
        default="JUDGE_API_KEY",
        metadata={
            "help": "Environment variable holding the judge endpoint's API key (with no "
            "judge_url, OPENAI_API_KEY is used when it is unset)."
        },
    )
    judge_prompt: Literal["pair-v2", "alpaca-ranking"] = field(
        default="pair-v2",
        metadata={
            "help": "'pair-v2': MT-bench's pairwise prompt (verdict [[A]]/[[B]]/[[C]]), used with "
            "GPT-4; 'alpaca-ranking': AlpacaEval's claude_ranking prompt, used with Claude."
        },
    )
    judge_temperature: float = field(
        default=0.0, metadata={"help": "Judge sampling temperature (reference: 0)."}
    )
    judge_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Maximum tokens of a judgment (default: the server's for pair-v2; 512 for "
            "alpaca-ranking, as the reference's Claude call)."
        },
    )
    both_orders: bool = field(
        default=False,
        metadata={
            "help": "Judge every pair in both orders and count a win or a loss only when the two "
            "verdicts agree (a disagreement counts as a tie)."
        },
    )

    concurrency: int = field(
        default=8,
        metadata={
            "help": "Requests in flight at once, per step (--engine vllm/ray: prompts per batch)."
        },
    )
    requests_per_second: float | None = field(
        default=None,
        metadata={"help": "Rate limit of request starts per step (default: no limit)."},
    )
    max_retries: int = field(
        default=5,
        metadata={"help": "Retries of a transient error (429, 5xx, dropped connection)."},
    )
    retry_max_wait: float = field(
        default=60.0,
        metadata={"help": "Longest wait between retries, in seconds (Retry-After is honoured)."},
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "Seconds one answer or judge request may take."}
    )
    bootstrap_samples: int = field(
        default=2000,
        metadata={"help": "Bootstrap resamples for the confidence interval of delta WR."},
    )
    confidence: float = field(
        default=0.95, metadata={"help": "Confidence level of the bootstrap interval."}
    )
    answer_price_input: float = field(
        default=0.0,
        metadata={"help": "USD per million prompt tokens of the answering model (cost counter)."},
    )
    answer_price_output: float = field(
        default=0.0,
        metadata={"help": "USD per million completion tokens of the answering model."},
    )
    judge_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the judge."}
    )
    judge_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the judge."}
    )
    progress: bool = field(
        default=True, metadata={"help": "Show a progress bar with the token and cost counter."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> EvalConfig:
        """Check every choice and range; raises :class:`TrainerConfigError` naming the fix."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("answer_backend", self.answer_backend, CHAT_BACKENDS)
        _choice("judge_backend", self.judge_backend, CHAT_BACKENDS)
        _choice("context_mode", self.context_mode, CONTEXT_MODES)
        _choice("judge_prompt", self.judge_prompt, JUDGE_PROMPTS)
        _choice("optimizer_mode", self.optimizer_mode, ("stable", "aggressive", "greedy"))
        if isinstance(self.testsets, str):
            self.testsets = [self.testsets]
        if not self.testsets:
            raise TrainerConfigError(
                "testsets is empty: name at least one of 'vicuna', 'dolly', 'self_instruct' or a "
                "path to a .jsonl/.json file of prompts"
            )
        if self.optimizer == "file" and not self.optimized_file:
            raise TrainerConfigError(
                "optimizer='file' needs optimized_file: the .jsonl/.json of optimized prompts"
            )
        if self.optimizer in ("tgi", "openai") and not self.optimizer_url:
            raise TrainerConfigError(
                f"optimizer={self.optimizer!r} needs optimizer_url (the optimizer server's URL), "
                "or use optimizer='local' / 'file'"
            )
        if self.optimizer == "openai" and not self.optimizer_model:
            raise TrainerConfigError("optimizer='openai' needs optimizer_model (the served name)")
        for role in ("answer", "judge"):
            if getattr(self, f"{role}_backend") == "tgi" and not getattr(self, f"{role}_url"):
                raise TrainerConfigError(f"{role}_backend='tgi' needs {role}_url (the server root)")
        self._validate_ranges()
        self.validate_engine()
        if self.engine != "backend":
            allowed = (
                ("local",)
                if "vllm" in (self.engine, self.ray_worker_engine)
                else ("local", "tgi", "openai")
            )
            if self.optimizer not in allowed:
                where = "a vLLM engine" if allowed == ("local",) else "the configured backend"
                raise TrainerConfigError(
                    f"engine={self.engine!r} runs the optimizer model on {where}, so "
                    f"optimizer={self.optimizer!r} cannot be used with it: use "
                    f"optimizer={allowed[0]!r} (the default) or engine='backend'"
                )
        return self

    def _validate_ranges(self) -> None:
        _positive("rounds", self.rounds)
        _positive("concurrency", self.concurrency)
        _positive("answer_max_tokens", self.answer_max_tokens)
        _positive("bootstrap_samples", self.bootstrap_samples)
        if self.rounds > 10:
            raise TrainerConfigError(f"rounds must be at most 10, got {self.rounds}")
        if self.sample_size is not None:
            _positive("sample_size", self.sample_size)
        if self.judge_max_tokens is not None:
            _positive("judge_max_tokens", self.judge_max_tokens)
        if self.max_retries < 0:
            raise TrainerConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise TrainerConfigError(
                f"requests_per_second must be > 0 (or unset for no limit), "
                f"got {self.requests_per_second}"
            )
        if not 0 < self.confidence < 1:
            raise TrainerConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 < self.answer_top_p <= 1:
            raise TrainerConfigError(f"answer_top_p must be in (0, 1], got {self.answer_top_p}")
        for name in ("answer_temperature", "judge_temperature", "retry_max_wait"):
            if getattr(self, name) < 0:
                raise TrainerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def resolved_data_dir(self) -> Path:
        """Where the built-in test sets are read from."""
        return resolve_data_dir(self.data_dir)

    def api_key(self, role: str) -> str:
        """The API key for ``role`` ('answer' or 'judge') from its environment variable.

        ``OPENAI_API_KEY`` is read only for OpenAI's own API (no URL set), so that key is never
        sent to another server. Local servers (vLLM, TGI, llama.cpp) accept any key: ``"EMPTY"``
        is sent when no key is set.
        """
        key = os.environ.get(getattr(self, f"{role}_api_key_env"), "")
        if not key and getattr(self, f"{role}_url") is None:
            key = os.environ.get("OPENAI_API_KEY", "")
        return key or "EMPTY"


def settings_hash(*parts: Any) -> str:
    """A short stable digest of the settings that determine a step's outputs (the cache key)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise TrainerConfigError(f"{name}={value!r} is not supported: choose one of {options}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise TrainerConfigError(f"{name} must be a positive integer, got {value!r}")
