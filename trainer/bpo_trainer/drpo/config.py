"""The DRPO search's configuration, mirrored field by field by ``bpo-train drpo``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from bpo_trainer.errors import TrainerConfigError

CHAT_BACKENDS = ("openai", "tgi", "local")
ROLES = ("base", "optimizer", "judge")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
"""The plain system prompt the search starts from (the reference's default)."""


@dataclass
class DRPOConfig:
    """Settings of ``bpo-train drpo``: search an alignment instruction (a system prompt and
    optimized in-context examples) for one base model, scored by an LLM judge whose reward
    aspects are chosen per query.

    The defaults follow the reference implementation (``maitrix-org/llm-reasoners``
    ``examples/DRPO``): a judge at temperature 0; ICL responses revised up to 5 times; a system
    prompt beam of 2 over 20 steps (one new seed query per step) with 3 proposals per state, a
    state whose mean score is at least 4.5 kept instead of revised (and the depth extended, at
    most 10 times); 2 retrieved examples per query.

    Example:
        >>> config = DRPOConfig(queries_file="seed_queries.jsonl", examples_file="icl.jsonl",
        ...                     base_url="http://localhost:8000/v1", base_model="mistral-7b",
        ...                     judge_model="gpt-4o", optimizer_model="gpt-4o")
        >>> config.validate().prompt_beam_width
        2
    """

    output_dir: str = field(
        default="runs/drpo",
        metadata={
            "help": "Folder of alignment.json (the artifact), search_log.md, and the resumable "
            "logs calls.jsonl and steps.jsonl. Re-running with the same settings makes no new "
            "calls."
        },
    )
    queries_file: str | None = field(
        default=None,
        metadata={
            "help": "Seed queries (.jsonl/.json; field 'query', 'prompt', 'instruction' or "
            "'text') the system prompt is optimized on. Required."
        },
    )
    examples_file: str | None = field(
        default=None,
        metadata={
            "help": "Base in-context examples (.jsonl/.json of 'query' + 'response'; "
            "'instruction'/'output' also read) whose responses are optimized first. Without "
            "it only the system prompt is searched."
        },
    )
    num_queries: int | None = field(
        default=None,
        metadata={"help": "Use a seeded random sample of this many seed queries (default: all)."},
    )
    num_examples: int | None = field(
        default=None,
        metadata={"help": "Optimize only the first N base examples (the reference: 16)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the query sample and of sampling."})

    base_backend: Literal["openai", "tgi", "local"] = field(
        default="openai",
        metadata={
            "help": "The model to align: 'openai' (any OpenAI-compatible endpoint), 'tgi' or "
            "'local' (a transformers folder / hub id with a chat template)."
        },
    )
    base_url: str | None = field(default=None, metadata={"help": "The base model's endpoint."})
    base_model: str = field(
        default="gpt-3.5-turbo", metadata={"help": "The base model's name, or folder (local)."}
    )
    base_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the base endpoint's API key."},
    )
    base_max_tokens: int = field(
        default=1024, metadata={"help": "Maximum new tokens of a base model answer."}
    )
    base_temperature: float = field(
        default=0.0, metadata={"help": "Base model temperature (reference: 0, greedy)."}
    )

    optimizer_backend: Literal["openai", "tgi", "local"] = field(
        default="openai",
        metadata={"help": "The optimizer LLM (revises responses and system prompts): its API."},
    )
    optimizer_url: str | None = field(
        default=None, metadata={"help": "The optimizer's endpoint (default: api.openai.com)."}
    )
    optimizer_model: str = field(default="gpt-4o", metadata={"help": "The optimizer model."})
    optimizer_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the optimizer endpoint's API key."},
    )
    optimizer_temperature: float = field(
        default=0.7,
        metadata={"help": "Optimizer sampling temperature (candidates differ by their seed)."},
    )
    optimizer_max_tokens: int = field(
        default=2048, metadata={"help": "Maximum new tokens of a revision or a proposal."}
    )

    judge_backend: Literal["openai", "tgi", "local"] = field(
        default="openai",
        metadata={"help": "The judge LLM (picks the reward aspects, scores 1-5): its API."},
    )
    judge_url: str | None = field(
        default=None, metadata={"help": "The judge's endpoint (default: api.openai.com)."}
    )
    judge_model: str = field(default="gpt-4o", metadata={"help": "The judge model."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the judge endpoint's API key."},
    )
    judge_temperature: float = field(
        default=0.0, metadata={"help": "Judge temperature (reference: 0)."}
    )
    judge_max_tokens: int = field(
        default=2048, metadata={"help": "Maximum new tokens of an aspect selection or a score."}
    )
    judge_parse_retries: int = field(
        default=1,
        metadata={
            "help": "Ask the judge again (another seed) when its scores cannot be parsed; after "
            "that the judgment counts as malformed and gives no reward."
        },
    )

    icl_beam_width: int = field(
        default=1, metadata={"help": "ICL search: revised responses kept per depth."}
    )
    icl_depth: int = field(
        default=5, metadata={"help": "ICL search: revision rounds per example (reference: 5)."}
    )
    icl_candidates: int = field(
        default=1, metadata={"help": "ICL search: revisions the optimizer writes per kept state."}
    )

    initial_system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "The plain system prompt the search starts from (or a file path)."},
    )
    prompt_beam_width: int = field(
        default=2, metadata={"help": "System prompt search: prompts kept per step."}
    )
    prompt_depth: int = field(
        default=20,
        metadata={"help": "System prompt search: optimization steps (one new seed query each)."},
    )
    prompt_candidates: int = field(
        default=3, metadata={"help": "System prompt search: proposals per kept prompt."}
    )
    prompt_max_depth_increase: int = field(
        default=10,
        metadata={
            "help": "Steps added (one per step at most) when a prompt already scores above "
            "skip_threshold and is kept instead of revised."
        },
    )
    skip_threshold: float = field(
        default=4.5,
        metadata={"help": "A prompt whose answer's mean score is at least this is not revised."},
    )
    k: int = field(
        default=2,
        metadata={"help": "In-context examples retrieved per query (BM25 on example queries)."},
    )

    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once, per model."})
    requests_per_second: float | None = field(
        default=None, metadata={"help": "Rate limit of request starts per model (default: none)."}
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
        default=600.0, metadata={"help": "Seconds one request may take."}
    )
    base_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the base model."}
    )
    base_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the base model."}
    )
    optimizer_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the optimizer."}
    )
    optimizer_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the optimizer."}
    )
    judge_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the judge."}
    )
    judge_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the judge."}
    )
    progress: bool = field(
        default=True, metadata={"help": "Show progress bars with the token and cost counter."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DRPOConfig:
        """Check every choice and range; raises :class:`TrainerConfigError` naming the fix."""
        for role in ROLES:
            backend = getattr(self, f"{role}_backend")
            if backend not in CHAT_BACKENDS:
                options = ", ".join(repr(c) for c in CHAT_BACKENDS)
                raise TrainerConfigError(
                    f"{role}_backend={backend!r} is not supported: choose one of {options}"
                )
            if backend == "tgi" and not getattr(self, f"{role}_url"):
                raise TrainerConfigError(f"{role}_backend='tgi' needs {role}_url (the server root)")
        for name in (
            "base_max_tokens",
            "optimizer_max_tokens",
            "judge_max_tokens",
            "icl_beam_width",
            "icl_candidates",
            "prompt_beam_width",
            "prompt_candidates",
            "concurrency",
        ):
            _positive(name, getattr(self, name))
        for name in ("icl_depth", "prompt_depth", "prompt_max_depth_increase", "k", "max_retries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise TrainerConfigError(
                    f"{name} must be an integer >= 0, got {getattr(self, name)!r}"
                )
        if self.judge_parse_retries < 0:
            raise TrainerConfigError(
                f"judge_parse_retries must be >= 0, got {self.judge_parse_retries}"
            )
        for name in ("num_queries", "num_examples"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not 1 <= self.skip_threshold <= 5.0001:
            raise TrainerConfigError(
                f"skip_threshold must be a mean score in [1, 5], got {self.skip_threshold}"
            )
        for name in (
            "base_temperature",
            "optimizer_temperature",
            "judge_temperature",
            "retry_max_wait",
        ):
            if getattr(self, name) < 0:
                raise TrainerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise TrainerConfigError(
                f"requests_per_second must be > 0 (or unset for no limit), "
                f"got {self.requests_per_second}"
            )
        return self

    def require_inputs(self) -> None:
        """The checks that need the input files (done when the search starts)."""
        if not self.queries_file:
            raise TrainerConfigError(
                "queries_file is required: a .jsonl/.json of seed queries ('query', 'prompt', "
                "'instruction' or 'text' per record) to optimize the system prompt on"
            )

    def api_key(self, role: str) -> str:
        """The API key of ``role`` from its environment variable (``"EMPTY"`` when unset, which
        local OpenAI-compatible servers accept)."""
        return os.environ.get(getattr(self, f"{role}_api_key_env"), "") or "EMPTY"


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainerConfigError(f"{name} must be a positive integer, got {value!r}")
