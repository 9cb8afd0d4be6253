"""The ``drpo-eval`` stage: the judge scores answers with and without the alignment instruction.

Each test prompt is answered once per *variant* (``base``: the bare prompt, optionally under
``base_system_prompt``; ``drpo``: the artifact's system prompt and K retrieved examples;
``system_prompt`` and ``examples``: one half each, the paper's ablation), and every answer is
scored 1 to 5 per aspect with just-eval's prompts (``Re-Align/just-eval``: helpfulness, clarity,
factuality, depth and engagement; safety for the prompts of ``safety_testsets``), as the DRPO
paper evaluates on just-eval-instruct. The report gives the mean of each aspect per test set and
variant, as a markdown table and a PNG chart.

The machinery is the BPO evaluation's (:mod:`bpo_trainer.evaluate`): its test sets, chat clients
and runtime (:meth:`~bpo_trainer.evaluate.runtime.RunState.chat_step`: ``answers.jsonl`` and
``scores.jsonl`` in ``output_dir`` are the cache, keyed by the settings that determine each
record, so a re-run makes no new calls and a stopped run resumes; rate limits, retries and cost
counters). just-eval's prompts are :mod:`bpo_trainer.drpo.just_eval`, the report
:mod:`bpo_trainer.drpo.eval_report`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bpo_integrations.drpo import ArtifactError, DRPOAligner, alignment_messages
from bpo_trainer.drpo.eval_report import write_report
from bpo_trainer.drpo.just_eval import MULTI_ASPECTS, SAFETY_ASPECTS, just_eval_messages
from bpo_trainer.drpo.parsing import parse_scores
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.evaluate.chat import ChatModel, ChatReply, SamplingParams
from bpo_trainer.evaluate.config import settings_hash
from bpo_trainer.evaluate.runtime import (
    ChatJob,
    RunState,
    chat_models,
    progress_bar,
    run_blocking,
)
from bpo_trainer.evaluate.testsets import (
    EvalPrompt,
    load_testset,
    resolve_data_dir,
    sample_prompts,
)

__all__ = [
    "DRPOEvalConfig",
    "DRPOEvalResult",
    "arun_drpo_eval",
    "just_eval_messages",
    "run_drpo_eval",
]

VARIANTS = ("base", "drpo", "system_prompt", "examples")
CHAT_BACKENDS = ("openai", "tgi", "local")
ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "scores.jsonl"


@dataclass
class DRPOEvalConfig:
    """Settings of ``bpo-train drpo-eval``.

    Example:
        >>> config = DRPOEvalConfig(artifact="runs/drpo/alignment.json",
        ...                         testsets=["just_eval_instruct.jsonl"],
        ...                         answer_url="http://localhost:8000/v1",
        ...                         answer_model="mistral-7b-instruct", judge_model="gpt-4o")
        >>> config.validate().variants
        ['base', 'drpo']
    """

    artifact: str | None = field(
        default=None,
        metadata={"help": "The alignment.json written by `bpo-train drpo`. Required."},
    )
    output_dir: str = field(
        default="runs/drpo-eval",
        metadata={
            "help": "Folder of answers.jsonl and scores.jsonl (the cache: a re-run makes no new "
            "calls), report.md, summary.json and aspects.png."
        },
    )
    testsets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test sets: .jsonl/.json files of prompts ('prompt', 'text' or 'instruction' "
            "[+ 'context'], e.g. just-eval-instruct), or 'vicuna', 'dolly', 'self_instruct' "
            "(read from --data-dir)."
        },
    )
    safety_testsets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Test sets of malicious prompts, scored on safety with just-eval's safety "
            "prompt (e.g. the 200 safety prompts of just-eval-instruct)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of the built-in BPO test sets."}
    )
    sample_size: int | None = field(
        default=None, metadata={"help": "A seeded random sample of this many prompts per set."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sample."})
    variants: list[str] = field(
        default_factory=lambda: ["base", "drpo"],
        metadata={
            "help": "What is compared: 'base' (no alignment), 'drpo' (system prompt + K "
            "examples), 'system_prompt' (the prompt only), 'examples' (the examples only)."
        },
    )
    k: int | None = field(
        default=None, metadata={"help": "Examples per query (default: the artifact's k)."}
    )
    base_system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System prompt of the 'base' and 'examples' variants (default: none), e.g. "
            "the model's usual one."
        },
    )

    answer_backend: Literal["openai", "tgi", "local"] = field(
        default="openai", metadata={"help": "The aligned model's API: 'openai', 'tgi', 'local'."}
    )
    answer_url: str | None = field(default=None, metadata={"help": "Its endpoint."})
    answer_model: str = field(
        default="gpt-3.5-turbo", metadata={"help": "Its name, or a folder (local)."}
    )
    answer_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Variable holding its API key."}
    )
    answer_max_tokens: int = field(default=1024, metadata={"help": "Maximum new tokens."})
    answer_temperature: float = field(
        default=0.0, metadata={"help": "Answer temperature (just-eval: greedy)."}
    )
    answer_top_p: float = field(default=1.0, metadata={"help": "Answer top_p."})

    judge_backend: Literal["openai", "tgi", "local"] = field(
        default="openai", metadata={"help": "The judge's API."}
    )
    judge_url: str | None = field(default=None, metadata={"help": "The judge's endpoint."})
    judge_model: str = field(
        default="gpt-4o", metadata={"help": "The judge (the paper: gpt-4-turbo)."}
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Variable holding the judge's API key."}
    )
    judge_temperature: float = field(default=0.0, metadata={"help": "Judge temperature."})
    judge_max_tokens: int | None = field(
        default=None, metadata={"help": "Maximum tokens of a judgment (default: the server's)."}
    )

    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once, per step."})
    requests_per_second: float | None = field(
        default=None, metadata={"help": "Rate limit of request starts per step."}
    )
    max_retries: int = field(default=5, metadata={"help": "Retries of a transient error."})
    retry_max_wait: float = field(
        default=60.0, metadata={"help": "Longest wait between retries, in seconds."}
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "Seconds one request may take."}
    )
    answer_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the answering model."}
    )
    answer_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the answering model."}
    )
    judge_price_input: float = field(
        default=0.0, metadata={"help": "USD per million prompt tokens of the judge."}
    )
    judge_price_output: float = field(
        default=0.0, metadata={"help": "USD per million completion tokens of the judge."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress and cost."})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DRPOEvalConfig:
        """Check every choice and range; raises :class:`TrainerConfigError` naming the fix."""
        for name in ("testsets", "safety_testsets", "variants"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        for role in ("answer", "judge"):
            backend = getattr(self, f"{role}_backend")
            if backend not in CHAT_BACKENDS:
                raise TrainerConfigError(
                    f"{role}_backend={backend!r} is not supported: choose 'openai', 'tgi' or "
                    "'local'"
                )
            if backend == "tgi" and not getattr(self, f"{role}_url"):
                raise TrainerConfigError(f"{role}_backend='tgi' needs {role}_url (the server root)")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise TrainerConfigError(
                f"variants must name some of {', '.join(VARIANTS)}; got {self.variants!r}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise TrainerConfigError(f"variants lists one twice: {self.variants!r}")
        if self.k is not None and self.k < 0:
            raise TrainerConfigError(f"k must be >= 0, got {self.k}")
        for name in ("concurrency", "answer_max_tokens"):
            if getattr(self, name) < 1:
                raise TrainerConfigError(f"{name} must be a positive integer")
        if self.sample_size is not None and self.sample_size < 1:
            raise TrainerConfigError(
                f"sample_size must be a positive integer, got {self.sample_size}"
            )
        if not 0 < self.answer_top_p <= 1:
            raise TrainerConfigError(f"answer_top_p must be in (0, 1], got {self.answer_top_p}")
        return self

    def require_inputs(self) -> None:
        if not self.artifact:
            raise TrainerConfigError(
                "artifact is required: the alignment.json written by `bpo-train drpo`"
            )
        if not self.testsets and not self.safety_testsets:
            raise TrainerConfigError(
                "no test set: give testsets (prompts scored on helpfulness, clarity, factuality, "
                "depth, engagement) and/or safety_testsets (scored on safety)"
            )

    def api_key(self, role: str) -> str:
        return os.environ.get(getattr(self, f"{role}_api_key_env"), "") or "EMPTY"

    def resolved_data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir)


@dataclass
class DRPOEvalResult:
    """The report files, the summary (also in ``summary.json``) and this run's calls."""

    output_dir: Path
    summary: dict[str, Any]
    report_path: Path
    chart: Path | None
    new_calls: dict[str, int]
    failures: dict[str, int]

    def __str__(self) -> str:
        return f"report: {self.report_path}" + (f"\nchart: {self.chart}" if self.chart else "")


@dataclass(frozen=True)
class _Item:
    prompt: EvalPrompt
    safety: bool

    @property
    def key(self) -> str:
        return f"{self.prompt.testset}\x1f{self.prompt.id}"


def load_items(config: DRPOEvalConfig) -> list[_Item]:
    items: list[_Item] = []
    names: set[str] = set()
    for safety, listed in ((False, config.testsets), (True, config.safety_testsets)):
        for name in listed:
            loaded = load_testset(name, data_dir=config.resolved_data_dir())
            if loaded[0].testset in names:
                raise TrainerConfigError(f"test set {loaded[0].testset!r} is listed twice")
            names.add(loaded[0].testset)
            items += [
                _Item(p, safety) for p in sample_prompts(loaded, config.sample_size, config.seed)
            ]
    return items


def variant_messages(
    aligner: DRPOAligner, variant: str, prompt: str, base_system_prompt: str | None
) -> list[dict[str, str]]:
    """The messages the answering model gets for ``prompt`` under ``variant``."""
    if variant == "drpo":
        return aligner.messages(prompt)
    examples = aligner.select(prompt).examples if variant == "examples" else ()
    system = aligner.system_prompt if variant == "system_prompt" else base_system_prompt
    return alignment_messages(system, examples, prompt)


async def _answer_step(
    run: RunState[DRPOEvalConfig], items: Sequence[_Item], aligner: DRPOAligner, model: ChatModel
) -> dict[tuple[str, str], dict[str, Any]]:
    """The answer records by (item key, variant)."""
    config = run.config
    params = SamplingParams(
        max_tokens=config.answer_max_tokens,
        temperature=config.answer_temperature,
        top_p=config.answer_top_p,
        seed=config.seed,
    )
    step_hash = settings_hash("drpo-answer", model.identity(), asdict(params))
    jobs = []
    for item in items:
        for variant in config.variants:
            messages = variant_messages(
                aligner, variant, item.prompt.prompt, config.base_system_prompt
            )
            key = settings_hash(step_hash, item.prompt.testset, item.prompt.id, variant, messages)
            jobs.append(ChatJob(key, messages, (item, variant)))

    def record(job: ChatJob[tuple[_Item, str]], reply: ChatReply) -> dict[str, Any]:
        item, variant = job.item
        return {
            "testset": item.prompt.testset,
            "id": item.prompt.id,
            "variant": variant,
            "prompt": item.prompt.prompt,
            "examples": sum(1 for m in job.messages if m["role"] == "assistant"),
            **reply.answer_fields(),
        }

    records = await run.chat_step("answer", run.out / ANSWERS_FILE, jobs, model, params, record)
    by_key = {r["key"]: r for r in records}
    return {(job.item[0].key, job.item[1]): by_key[job.key] for job in jobs if job.key in by_key}


async def _score_step(
    run: RunState[DRPOEvalConfig],
    items: Sequence[_Item],
    answers: dict[tuple[str, str], dict[str, Any]],
    model: ChatModel,
) -> list[dict[str, Any]]:
    """The judge's score records of every answer."""
    config = run.config
    params = SamplingParams(
        max_tokens=config.judge_max_tokens, temperature=config.judge_temperature
    )
    step_hash = settings_hash("drpo-score", model.identity(), asdict(params), "just-eval")
    jobs = []
    for item in items:
        for variant in config.variants:
            answer = answers.get((item.key, variant))
            if answer is None:
                continue
            prompt, text = item.prompt, answer["answer"]
            key = settings_hash(
                step_hash, item.safety, prompt.testset, prompt.id, variant, prompt.prompt, text
            )
            messages = just_eval_messages(prompt.prompt, text, safety=item.safety)
            jobs.append(ChatJob(key, messages, (item, variant)))

    def record(job: ChatJob[tuple[_Item, str]], reply: ChatReply) -> dict[str, Any]:
        item, variant = job.item
        evaluation = parse_scores(reply.text, SAFETY_ASPECTS if item.safety else MULTI_ASPECTS)
        return {
            "testset": item.prompt.testset,
            "id": item.prompt.id,
            "variant": variant,
            "safety": item.safety,
            "scores": evaluation.scores,
            "missing": list(evaluation.missing),
            "parse_error": evaluation.error,
            "judgment": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }

    return await run.chat_step("judge", run.out / SCORES_FILE, jobs, model, params, record)


async def arun_drpo_eval(
    config: DRPOEvalConfig,
    *,
    answer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
    embeddings: Any = None,
) -> DRPOEvalResult:
    """Async twin of :func:`run_drpo_eval`."""
    config.validate()
    config.require_inputs()
    try:
        aligner = DRPOAligner(config.artifact or "", k=config.k, embeddings=embeddings)
    except ArtifactError as error:
        raise TrainerConfigError(str(error)) from error
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = load_items(config)
    given = {"answer": answer_model, "judge": judge_model}
    async with chat_models(config, given) as models:
        with progress_bar(config.progress) as progress:
            run = RunState.start(config, out, roles=("answer", "judge"), progress=progress)
            answers = await _answer_step(run, items, aligner, models["answer"])
            records = await _score_step(run, items, answers, models["judge"])
    report, chart, summary = write_report(config, aligner, records, run, len(items))
    if not records and any(run.failures.values()):
        step, message = next(iter(run.errors.items()))
        raise StageFailedError(
            f"no answer could be scored: the {step} step failed ({message}); fix that endpoint "
            f"and run again: finished work in {out} is kept"
        )
    return DRPOEvalResult(out, summary, report, chart, dict(run.new_calls), dict(run.failures))


def run_drpo_eval(
    config: DRPOEvalConfig,
    *,
    answer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
    embeddings: Any = None,
) -> DRPOEvalResult:
    """Score answers with and without the alignment instruction (just-eval's 1-5 aspects) and
    write ``report.md``, ``summary.json`` and ``aspects.png``.

    Example:
        >>> config = DRPOEvalConfig(artifact="runs/drpo/alignment.json",
        ...                         testsets=["just_eval_instruct.jsonl"], judge_model="gpt-4o",
        ...                         answer_url="http://localhost:8000/v1", answer_model="mistral")
        >>> print(run_drpo_eval(config).report_path.read_text())  # doctest: +SKIP
    """
    return run_blocking(
        arun_drpo_eval(
            config, answer_model=answer_model, judge_model=judge_model, embeddings=embeddings
        )
    )
