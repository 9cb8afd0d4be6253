"""The evaluation as three resumable steps: optimize, answer, judge; then the report.

Each step appends one record per finished item to a JSONL file in ``output_dir``
(``optimized.jsonl``, ``answers.jsonl``, ``judgments.jsonl``). A record's ``key`` is a hash of the
settings that determine it (endpoint, model, sampling, prompt) and of its inputs, so the files are
the cache: a re-run with the same settings makes no new calls, a run stopped mid-way resumes where
it stopped, and a changed setting recomputes only what it affects. A failed call (after the
retries) writes nothing and is retried by the next run; a judgment whose verdict cannot be parsed
is a result, recorded and reported as ``invalid``.

Records are flushed one by one (a killed process loses only the calls in flight) but not fsynced:
after a power loss the last records may be missing, and the next run makes those calls again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.evaluate.answer_step import ANSWERS_FILE, answer_step
from bpo_trainer.evaluate.chat import ChatModel
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.judge_step import JUDGMENTS_FILE, judge_step
from bpo_trainer.evaluate.optimize_step import OPTIMIZED_FILE, Optimized, optimize_step
from bpo_trainer.evaluate.outcomes import (
    combine_orders,
    optimized_position,
    outcome_for_optimized,
    pair_outcomes,
)
from bpo_trainer.evaluate.runtime import RunState, chat_models, progress_bar, run_blocking
from bpo_trainer.evaluate.testsets import EvalPrompt, load_testset, sample_prompts

if TYPE_CHECKING:
    from bpo_integrations import BPOOptimizer

__all__ = [
    "ANSWERS_FILE",
    "JUDGMENTS_FILE",
    "OPTIMIZED_FILE",
    "STEPS",
    "EvalResult",
    "arun_eval",
    "combine_orders",
    "load_eval_prompts",
    "optimized_position",
    "outcome_for_optimized",
    "pair_outcomes",
    "run_eval",
]

STEPS = ("optimize", "answer", "judge")


@dataclass
class EvalResult:
    """What one run produced: the report files, the summary (also in ``summary.json``), and the
    calls this run made (zero everywhere on a fully cached re-run)."""

    output_dir: Path
    summary: dict[str, Any]
    report_path: Path
    charts: list[Path]
    new_calls: dict[str, int]
    failures: dict[str, int]

    def __str__(self) -> str:
        lines = [
            f"{'Test set':<16} {'round':>5} {'n':>5} {'win%':>6} {'tie%':>6} {'lose%':>6} "
            f"{'dWR':>6} {'invalid%':>8}"
        ]
        for row in self.summary["results"]:
            if row["round"] != self.summary["config"]["rounds"]:
                continue
            lines.append(
                f"{row['testset']:<16} {row['round']:>5} {row['n']:>5} "
                f"{row['win_rate'] * 100:>6.1f} {row['tie_rate'] * 100:>6.1f} "
                f"{row['lose_rate'] * 100:>6.1f} {row['delta_wr'] * 100:>+6.1f} "
                f"{row['invalid_rate'] * 100:>8.1f}"
            )
        lines.append(f"report: {self.report_path}")
        lines += [f"chart: {chart}" for chart in self.charts]
        return "\n".join(lines)


def load_eval_prompts(config: EvalConfig) -> list[EvalPrompt]:
    """The (sampled) prompts of every configured test set."""
    prompts: list[EvalPrompt] = []
    names: set[str] = set()
    for name in config.testsets:
        loaded = load_testset(name, data_dir=config.resolved_data_dir())
        if loaded and loaded[0].testset in names:
            raise TrainerConfigError(f"test set {loaded[0].testset!r} is listed twice")
        names.add(loaded[0].testset)
        prompts += sample_prompts(loaded, config.sample_size, config.seed)
    return prompts


async def arun_eval(
    config: EvalConfig,
    *,
    optimizer: BPOOptimizer | None = None,
    answer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
) -> EvalResult:
    """Async twin of :func:`run_eval`."""
    from bpo_trainer.evaluate.report import write_report

    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = load_eval_prompts(config)
    given = {"answer": answer_model, "judge": judge_model}
    async with chat_models(config, given) as models:
        with progress_bar(config.progress) as progress:
            run = RunState.start(
                config, out, roles=("answer", "judge"), steps=STEPS, progress=progress
            )
            optimized = await optimize_step(run, items, optimizer)
            answers = await answer_step(run, items, optimized, models["answer"])
            records, missing = await judge_step(run, items, answers, models["judge"])
    rows = pair_outcomes(records, both_orders=config.both_orders)
    expected = len(items) * config.rounds
    fallbacks = sum(1 for item in items if optimized.get(item.key, Optimized(())).fell_back)
    run_info = {
        "prompts": len(items),
        "pairs_expected": expected,
        "pairs_judged": len(rows),
        "pairs_missing": expected - len(rows),
        "pairs_without_answers": missing,
        "optimizer_fallbacks": fallbacks,
        "new_calls": dict(run.new_calls),
        "failed_calls": dict(run.failures),
        "first_errors": dict(run.errors),
        "usage_this_run": {role: u.to_dict() for role, u in run.usage.items()},
        "usage_total": {role: u.to_dict() for role, u in run.total.items()},
    }
    report_path, charts, summary = write_report(config, rows, records, run_info)
    if not rows and any(run.failures.values()):
        step, message = next(iter(run.errors.items()))
        raise StageFailedError(
            f"no pair could be judged: the {step} step failed ({message}); fix that endpoint and "
            f"run again: finished work in {out} is kept"
        )
    return EvalResult(
        output_dir=out,
        summary=summary,
        report_path=report_path,
        charts=charts,
        new_calls=dict(run.new_calls),
        failures=dict(run.failures),
    )


def run_eval(
    config: EvalConfig,
    *,
    optimizer: BPOOptimizer | None = None,
    answer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
) -> EvalResult:
    """Run the paper's evaluation: optimize each test prompt, answer the original and the
    optimized prompt, let the judge compare the two answers, and write the report.

    ``optimizer``, ``answer_model`` and ``judge_model`` replace the ones the config describes
    (e.g. a :class:`~bpo_integrations.BPOOptimizer` over any backend; give it a label in
    ``config.optimizer_model``, which keys its cached rewrites).

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> config = EvalConfig(testsets=["my_prompts.jsonl"], output_dir="runs/eval",
        ...                     optimizer_model="add-detail", answer_url="http://localhost:8000/v1",
        ...                     answer_model="llama-2-7b-chat", judge_model="gpt-4o")
        >>> optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Answer in detail."))
        >>> result = run_eval(config, optimizer=optimizer)  # doctest: +SKIP
        >>> print(result.report_path.read_text())  # doctest: +SKIP
    """
    return run_blocking(
        arun_eval(config, optimizer=optimizer, answer_model=answer_model, judge_model=judge_model)
    )
