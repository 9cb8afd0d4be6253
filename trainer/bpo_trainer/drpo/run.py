"""``run_drpo``: the whole search, resumable, with progress, a cost counter and a markdown log."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpo_integrations.drpo import AlignmentArtifact, load_artifact, make_retriever
from bpo_trainer.drpo.artifact import build_artifact, malformed_counts, save_artifact
from bpo_trainer.drpo.calls import ModelCalls
from bpo_trainer.drpo.config import DRPOConfig
from bpo_trainer.drpo.data import load_examples, load_queries
from bpo_trainer.drpo.markdown import render_search_log
from bpo_trainer.drpo.search import ICLSearch, OptimizedExample, PromptSearch
from bpo_trainer.drpo.steps import StepLog
from bpo_trainer.evaluate.chat import ChatModel
from bpo_trainer.evaluate.runtime import chat_models, progress_bar, run_blocking

LOG_FILE = "search_log.md"


@dataclass
class DRPOResult:
    """What a search produced: the artifact (also in ``alignment.json``), the markdown log, and
    the calls this run sent (zero on a fully finished re-run) and replayed."""

    output_dir: Path
    artifact_path: Path
    log_path: Path
    artifact: AlignmentArtifact
    new_calls: dict[str, int]
    cached_calls: dict[str, int]
    steps_reused: int
    steps_run: int
    malformed: dict[str, int]
    usage: dict[str, Any]

    def __str__(self) -> str:
        scores = self.artifact.scores.get("system_prompt", {})
        lines = [
            f"alignment: {self.artifact_path}",
            f"search log: {self.log_path}",
            f"system prompt: mean reward {scores.get('best_aggregate', 0):.2f} along the best "
            f"path ({len(self.artifact.examples)} examples, k={self.artifact.k})",
            "new calls: " + ", ".join(f"{r} {n}" for r, n in self.new_calls.items()),
            f"steps: {self.steps_run} run, {self.steps_reused} reused",
            "unreadable: " + ", ".join(f"{k} {v}" for k, v in self.malformed.items() if v),
        ]
        cost = self.usage.get("cost_usd_total")
        if cost:
            lines.append(f"cost: ${cost:.4f}")
        return "\n".join(line for line in lines if not line.endswith(": "))


def _initial_prompt(value: str) -> str:
    path = Path(value)
    if len(value) < 4096 and "\n" not in value and path.suffix and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return value


async def arun_drpo(
    config: DRPOConfig,
    *,
    base_model: ChatModel | None = None,
    optimizer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
    embeddings: Any = None,
) -> DRPOResult:
    """Async twin of :func:`run_drpo`."""
    config.validate()
    config.require_inputs()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries = load_queries(config.queries_file or "", sample=config.num_queries, seed=config.seed)
    base_examples = (
        load_examples(config.examples_file, limit=config.num_examples)
        if config.examples_file
        else []
    )
    initial_prompt = _initial_prompt(config.initial_system_prompt)
    given = {"base": base_model, "optimizer": optimizer_model, "judge": judge_model}
    async with chat_models(config, given) as models:
        header = _header(config, models, queries, base_examples)
        icl_records: list[list[dict[str, Any]]] = [[] for _ in base_examples]
        prompt_records: list[dict[str, Any]] = []
        log_path = out / LOG_FILE

        def write_log(result: Mapping[str, Any] | None = None) -> None:
            text = render_search_log(
                header=header, icl=icl_records, prompt=prompt_records, result=result
            )
            log_path.write_text(text, encoding="utf-8")

        steps = StepLog(out)
        try:
            with progress_bar(config.progress) as progress:
                calls = ModelCalls(out, config, models, progress=progress)
                try:
                    icl_task = prompt_task = None
                    if progress is not None:
                        icl_task = progress.add_task("ICL examples", total=len(base_examples))
                        prompt_task = progress.add_task(
                            "system prompt", total=config.prompt_depth + 1
                        )

                    def on_icl_step(record: dict[str, Any]) -> None:
                        icl_records[record["example"]].append(record)
                        write_log()
                        if progress is not None:
                            progress.update(
                                icl_task, description=f"ICL examples  {calls.describe()}"
                            )

                    icl = ICLSearch(calls, config, steps, on_step=on_icl_step)

                    async def optimize(index: int, query: str, response: str) -> OptimizedExample:
                        result = await icl.optimize(index, query, response)
                        if progress is not None:
                            progress.advance(icl_task)
                        return result

                    optimized = list(
                        await asyncio.gather(
                            *(optimize(i, q, r) for i, (q, r) in enumerate(base_examples))
                        )
                    )
                    examples = [example.to_icl_example() for example in optimized]
                    retriever = make_retriever([e.query for e in examples], embeddings)
                    retrieval = "bm25" if embeddings is None else type(embeddings).__name__

                    def on_prompt_step(record: dict[str, Any]) -> None:
                        prompt_records.append(record)
                        write_log()
                        if progress is not None:
                            total = config.prompt_depth + 1 + record["extra_steps"]
                            progress.update(
                                prompt_task,
                                advance=1,
                                total=min(total, len(queries)),
                                description=f"system prompt  {calls.describe()}",
                            )

                    searched = await PromptSearch(
                        calls,
                        config,
                        steps,
                        examples,
                        retriever,
                        retrieval=retrieval,
                        on_step=on_prompt_step,
                    ).run(queries, initial_prompt)
                finally:
                    calls.close()
        finally:
            steps.close()

    malformed = malformed_counts(optimized, searched)
    usage = calls.usage_summary()
    stats = {
        "malformed": malformed,
        "calls": usage,
        "steps": {"run": steps.written, "reused": steps.reused},
        "seed_queries": len(queries),
        "seed_queries_used": len(searched.records),
    }
    data = build_artifact(
        config,
        examples=optimized,
        prompt=searched,
        models={role: model.identity() for role, model in models.items()},
        retrieval=retrieval,
        stats=stats,
    )
    artifact_path = save_artifact(out, data)
    write_log(
        {
            "system_prompt": searched.system_prompt,
            "aggregate": searched.aggregate,
            "initial_reward": searched.initial_reward,
        }
    )
    return DRPOResult(
        output_dir=out,
        artifact_path=artifact_path,
        log_path=log_path,
        artifact=load_artifact(artifact_path),
        new_calls=usage["new_calls"],
        cached_calls=usage["cached_calls"],
        steps_reused=steps.reused,
        steps_run=steps.written,
        malformed=malformed,
        usage=usage,
    )


def _header(
    config: DRPOConfig,
    models: Mapping[str, ChatModel],
    queries: list[str],
    examples: list[tuple[str, str]],
) -> list[str]:
    names = {
        role: " / ".join(str(p) for p in model.identity() if p) for role, model in models.items()
    }  # type: ignore[union-attr]
    return [
        f"- Base model: {names['base']}",
        f"- Optimizer: {names['optimizer']} (temperature {config.optimizer_temperature})",
        f"- Judge: {names['judge']} (temperature {config.judge_temperature})",
        f"- In-context examples: {len(examples)} (beam {config.icl_beam_width}, depth "
        f"{config.icl_depth}, {config.icl_candidates} revisions per state)",
        f"- Seed queries: {len(queries)} (beam {config.prompt_beam_width}, depth "
        f"{config.prompt_depth}, {config.prompt_candidates} proposals per state, k={config.k})",
    ]


def run_drpo(
    config: DRPOConfig,
    *,
    base_model: ChatModel | None = None,
    optimizer_model: ChatModel | None = None,
    judge_model: ChatModel | None = None,
    embeddings: Any = None,
) -> DRPOResult:
    """Search an alignment instruction for the base model and write ``alignment.json``.

    Step 1 optimizes the responses of the base in-context examples, step 2 the system prompt
    (see :mod:`bpo_trainer.drpo.search`). ``base_model``, ``optimizer_model`` and
    ``judge_model`` replace the ones the config describes (any
    :class:`~bpo_trainer.evaluate.ChatModel`); ``embeddings`` (a LangChain ``Embeddings`` or a
    LlamaIndex ``BaseEmbedding``) ranks examples instead of BM25: give the middleware the same.

    Every call is cached in ``calls.jsonl`` and every finished step in ``steps.jsonl``: a run
    stopped part-way (a crash, Ctrl-C, an endpoint down) resumes where it stopped.

    Example:
        >>> config = DRPOConfig(
        ...     output_dir="runs/drpo-mistral", queries_file="seed_queries.jsonl",
        ...     examples_file="icl_examples.jsonl", base_url="http://localhost:8000/v1",
        ...     base_model="mistral-7b-instruct", judge_model="gpt-4o", optimizer_model="gpt-4o",
        ... )
        >>> result = run_drpo(config)  # doctest: +SKIP
        >>> print(result.artifact.system_prompt)  # doctest: +SKIP
    """
    return run_blocking(
        arun_drpo(
            config,
            base_model=base_model,
            optimizer_model=optimizer_model,
            judge_model=judge_model,
            embeddings=embeddings,
        )
    )
