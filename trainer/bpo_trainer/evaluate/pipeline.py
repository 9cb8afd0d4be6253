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

import asyncio
import contextlib
import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_integrations.jsonl import JsonlWriter
from bpo_integrations.template import join_context
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.evaluate.chat import ChatModel, SamplingParams, build_chat_model
from bpo_trainer.evaluate.config import EvalConfig, settings_hash
from bpo_trainer.evaluate.judge import JudgePrompt, get_judge_prompt
from bpo_trainer.evaluate.runtime import (
    CallLimiter,
    RunState,
    Usage,
    records_by_key,
    run_blocking,
)
from bpo_trainer.evaluate.testsets import EvalPrompt, load_testset, sample_prompts
from bpo_trainer.records import read_records

if TYPE_CHECKING:
    from bpo_integrations import BPOOptimizer, OptimizationResult

OPTIMIZED_FILE = "optimized.jsonl"
ANSWERS_FILE = "answers.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
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


def optimized_position(seed: int, testset: str, item_id: str, round_index: int) -> str:
    """The seeded draw of where the optimized prompt's answer is shown to the judge: ``"A"`` or
    ``"B"``. Stable across runs and machines (a hash, not the process's random state)."""
    digest = hashlib.sha256(f"{seed}|{testset}|{item_id}|{round_index}".encode()).digest()
    return "A" if digest[0] & 1 == 0 else "B"


def outcome_for_optimized(winner: str | None, position: str) -> str:
    """``win``/``lose``/``tie`` of the optimized prompt's answer, ``invalid`` if unparsed."""
    if winner is None:
        return "invalid"
    if winner == "tie":
        return "tie"
    return "win" if winner == position else "lose"


def combine_orders(first: str, second: str) -> str:
    """The outcome of a pair judged in both orders: the agreed one, ``invalid`` if either is,
    ``inconsistent`` (reported, and counted as a tie) when the two disagree."""
    if "invalid" in (first, second):
        return "invalid"
    return first if first == second else "inconsistent"


# -- step 1: optimize --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Optimized:
    rounds: tuple[str, ...]
    """The prompt the answering model gets for each round (context joined where it applies)."""
    fell_back: bool = False


def _build_optimizer(config: EvalConfig) -> BPOOptimizer:
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


def _load_optimized_file(config: EvalConfig, items: Sequence[EvalPrompt]) -> dict[str, list[str]]:
    path = Path(config.optimized_file or "")
    try:
        records = read_records(path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainerConfigError(f"optimized_file: {error}") from error
    by_id: dict[tuple[str | None, str], list[str]] = {}
    by_prompt: dict[str, list[str]] = {}
    for number, record in enumerate(records, start=1):
        rounds = record.get("rounds")
        if rounds is None:
            text = record.get("optimized_prompt", record.get("optimized"))
            rounds = [text] if text is not None else None
        if not rounds or not all(isinstance(r, str) and r.strip() for r in rounds):
            raise TrainerConfigError(
                f"{path} record {number}: no optimized prompt; give 'optimized_prompt', "
                "'optimized' or 'rounds' (a list of non-empty strings)"
            )
        raw_id = next((record[f] for f in ("id", "idx", "question_id") if f in record), None)
        if raw_id is not None:
            by_id[(record.get("testset"), str(raw_id))] = list(rounds)
        original = record.get("prompt", record.get("text"))
        if original is None and "instruction" in record:
            original = join_context(record["instruction"], record.get("context")).strip()
        if isinstance(original, str):
            by_prompt[original.strip()] = list(rounds)
    found: dict[str, list[str]] = {}
    missing = []
    for item in items:
        rounds = (
            by_id.get((item.testset, item.id))
            or by_id.get((None, item.id))
            or by_prompt.get(item.prompt)
        )
        if rounds is None:
            missing.append(f"{item.testset}/{item.id}")
            continue
        if len(rounds) < config.rounds:
            raise TrainerConfigError(
                f"{path}: {item.testset}/{item.id} has {len(rounds)} optimized round(s) but "
                f"rounds={config.rounds}; lower rounds or add the 'rounds' list"
            )
        found[_item_key(item)] = rounds[: config.rounds]
    if missing:
        raise TrainerConfigError(
            f"{path} has no optimized prompt for {len(missing)} test prompt(s), e.g. {missing[0]}: "
            "match them by 'id' (+ 'testset') or by the original 'prompt'"
        )
    return found


def _item_key(item: EvalPrompt) -> str:
    return f"{item.testset}\x1f{item.id}"


async def _optimize_step(
    run: RunState[EvalConfig], items: Sequence[EvalPrompt], optimizer: BPOOptimizer | None
) -> dict[str, _Optimized]:
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
        _item_key(item): settings_hash(step_hash, item.testset, item.id, item.prompt)
        for item in items
    }
    results: dict[str, _Optimized] = {}
    todo = []
    for item in items:
        record = done.get(keys[_item_key(item)])
        if record is not None:
            results[_item_key(item)] = _Optimized(
                tuple(record["round_prompts"]), record["fell_back"]
            )
        else:
            todo.append(item)
    if not todo:
        return results

    def record_for(item: EvalPrompt, rewrites: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "key": keys[_item_key(item)],
            "testset": item.testset,
            "id": item.id,
            "original": item.prompt,
            "rounds": rewrites,
            "round_prompts": _round_prompts(config, item, rewrites),
            **extra,
        }

    with JsonlWriter(path, fsync=False) as writer:
        if config.optimizer in ("file", "none"):
            from_file = _load_optimized_file(config, todo) if config.optimizer == "file" else {}
            for item in todo:
                if config.optimizer == "none":
                    source = item.prompt if config.context_mode == "inline" else item.instruction
                    rewrites = [source] * config.rounds
                else:
                    rewrites = from_file[_item_key(item)]
                record = record_for(item, rewrites, fell_back=False)
                writer.write(record)
                results[_item_key(item)] = _Optimized(tuple(record["round_prompts"]))
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
            results[_item_key(item)] = _Optimized(tuple(record["round_prompts"]), result.fell_back)

        if config.engine != "backend":
            from bpo_trainer.evaluate.engine_step import optimize_on_engine

            optimize_on_engine(run, todo, optimizer, finish)
            return results

        owned = optimizer is None
        optimizer = optimizer or _build_optimizer(config)
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


# -- step 2: answer ----------------------------------------------------------------------------


def _variants(item: EvalPrompt, optimized: _Optimized) -> list[tuple[str, str]]:
    pairs = [("original", item.prompt)]
    pairs += [(f"round-{i}", text) for i, text in enumerate(optimized.rounds, start=1)]
    return pairs


async def _answer_step(
    run: RunState[EvalConfig],
    items: Sequence[EvalPrompt],
    optimized: dict[str, _Optimized],
    model: ChatModel,
) -> dict[tuple[str, str], str]:
    """Answers by (item key, variant): ``original`` and ``round-1`` ... ``round-k``."""
    config = run.config
    params = SamplingParams(
        max_tokens=config.answer_max_tokens,
        temperature=config.answer_temperature,
        top_p=config.answer_top_p,
    )
    step_hash = settings_hash("answer", model.identity(), asdict(params))
    path = run.out / ANSWERS_FILE
    done = records_by_key(path)
    answers: dict[tuple[str, str], str] = {}
    todo: list[tuple[EvalPrompt, str, str, str]] = []
    for item in items:
        if _item_key(item) not in optimized:
            continue
        for variant, text in _variants(item, optimized[_item_key(item)]):
            key = settings_hash(step_hash, item.testset, item.id, variant, text)
            if key in done:
                answers[(_item_key(item), variant)] = done[key]["answer"]
                run.count_cached("answer", done[key])
            else:
                todo.append((item, variant, text, key))
    if not todo:
        return answers
    limiter = CallLimiter(config.concurrency, config.requests_per_second)
    with (
        JsonlWriter(path, fsync=False) as writer,
        run.progress_task("answer", len(todo)) as advance,
    ):

        async def one(item: EvalPrompt, variant: str, text: str, key: str) -> None:
            messages = [{"role": "user", "content": text}]
            try:
                reply = await run.call(
                    limiter,
                    lambda: model.achat(messages, params, timeout=config.request_timeout),
                )
            except Exception as error:
                run.fail("answer", error)
                advance()
                return
            run.count_reply("answer", reply)
            writer.write(
                {
                    "key": key,
                    "testset": item.testset,
                    "id": item.id,
                    "variant": variant,
                    "prompt": text,
                    "answer": reply.text,
                    "finish_reason": reply.finish_reason,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                }
            )
            answers[(_item_key(item), variant)] = reply.text
            advance()

        await asyncio.gather(*(one(*job) for job in todo))
    return answers


# -- step 3: judge -----------------------------------------------------------------------------


def _judge_params(config: EvalConfig, prompt: JudgePrompt) -> SamplingParams:
    max_tokens = config.judge_max_tokens or prompt.default_max_tokens
    return SamplingParams(max_tokens=max_tokens, temperature=config.judge_temperature)


async def _judge_step(
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
    path = run.out / JUDGMENTS_FILE
    done = records_by_key(path)
    records: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    missing = 0
    for item in items:
        for round_index in range(1, config.rounds + 1):
            original = answers.get((_item_key(item), "original"))
            improved = answers.get((_item_key(item), f"round-{round_index}"))
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
                if key in done:
                    records.append(done[key])
                    run.count_cached("judge", done[key])
                    continue
                answer_a, answer_b = (
                    (improved, original) if position == "A" else (original, improved)
                )
                todo.append(
                    {
                        "key": key,
                        "item": item,
                        "round": round_index,
                        "position": position,
                        "messages": prompt.messages(item.prompt, answer_a, answer_b),
                    }
                )
    if not todo:
        return records, missing
    limiter = CallLimiter(config.concurrency, config.requests_per_second)
    with JsonlWriter(path, fsync=False) as writer, run.progress_task("judge", len(todo)) as advance:

        async def one(job: dict[str, Any]) -> None:
            item: EvalPrompt = job["item"]
            try:
                reply = await run.call(
                    limiter,
                    lambda: model.achat(job["messages"], params, timeout=config.request_timeout),
                )
            except Exception as error:
                run.fail("judge", error)
                advance()
                return
            run.count_reply("judge", reply)
            verdict = prompt.parse(reply.text)
            record = {
                "key": job["key"],
                "testset": item.testset,
                "id": item.id,
                "category": item.category,
                "round": job["round"],
                "optimized_position": job["position"],
                "judge_prompt": prompt.name,
                "judgment": reply.text,
                "winner": verdict.winner,
                "parse_error": verdict.error,
                "outcome": outcome_for_optimized(verdict.winner, job["position"]),
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            }
            writer.write(record)
            records.append(record)
            advance()

        await asyncio.gather(*(one(job) for job in todo))
    return records, missing


def pair_outcomes(records: Sequence[dict[str, Any]], *, both_orders: bool) -> list[dict[str, Any]]:
    """One row per judged pair (test set, id, round): its category and outcome. With
    ``both_orders`` a pair needs both positions judged; the two outcomes are combined."""
    by_pair: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for record in records:
        pair = (record["testset"], record["id"], int(record["round"]))
        by_pair.setdefault(pair, {})[record["optimized_position"]] = record
    rows = []
    for (testset, item_id, round_index), judged in by_pair.items():
        if both_orders:
            if set(judged) != {"A", "B"}:
                continue
            outcome = combine_orders(judged["A"]["outcome"], judged["B"]["outcome"])
        else:
            outcome = next(iter(judged.values()))["outcome"]
        category = next(iter(judged.values())).get("category")
        rows.append(
            {
                "testset": testset,
                "id": item_id,
                "round": round_index,
                "category": category,
                "outcome": outcome,
            }
        )
    return rows


# -- the stage ---------------------------------------------------------------------------------


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
    owned: list[ChatModel] = []
    if answer_model is None:
        answer_model = build_chat_model(config, "answer")
        owned.append(answer_model)
    if judge_model is None:
        judge_model = build_chat_model(config, "judge")
        owned.append(judge_model)
    usage = {role: Usage.priced(config, role) for role in ("answer", "judge")}
    total = {role: Usage.priced(config, role) for role in ("answer", "judge")}
    progress_cm: Any = contextlib.nullcontext(None)
    if config.progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress_cm = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
    try:
        with progress_cm as progress:
            run = RunState(
                config=config,
                out=out,
                progress=progress,
                usage=usage,
                total=total,
                new_calls=dict.fromkeys(STEPS, 0),
                failures=dict.fromkeys(STEPS, 0),
            )
            optimized = await _optimize_step(run, items, optimizer)
            answers = await _answer_step(run, items, optimized, answer_model)
            records, missing = await _judge_step(run, items, answers, judge_model)
    finally:
        for model in owned:
            await model.aclose()
    rows = pair_outcomes(records, both_orders=config.both_orders)
    expected = len(items) * config.rounds
    fallbacks = sum(1 for item in items if optimized.get(_item_key(item), _Optimized(())).fell_back)
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
        "usage_this_run": {role: u.to_dict() for role, u in usage.items()},
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
