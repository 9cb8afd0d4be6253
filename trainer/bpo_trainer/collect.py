"""Stage ``collect``: the paper's four feedback sources mapped to single-turn preference pairs.

Each source is read through ``datasets`` (a hub id, or a local ``.json``/``.jsonl``/``.parquet``
file in the source's own format) and mapped to :class:`~bpo_trainer.records.FeedbackRecord`
(:mod:`bpo_trainer.feedback`):

- ``oasst1`` (OpenAssistant/oasst1): message-tree rows; a root prompter message with at least two
  ranked assistant replies gives ``good_res`` = rank 0 and ``bad_res`` = the worst rank. Replies to
  deeper prompter messages are multi-turn and dropped.
- ``hh-rlhf`` (Anthropic/hh-rlhf): ``chosen``/``rejected`` transcripts
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) with exactly one human turn.
- ``Chatbot_Arena_Conversation`` (lmsys/chatbot_arena_conversations): ``conversation_a``/``_b``
  with one turn and a winner (ties dropped); the models are kept as ``good_model``/``bad_model``.
- ``alpaca-gpt4`` (the GPT-4-LLM comparison data): LLaMA-Factory's ``comparison_gpt4_data_en.json``
  (``instruction``, ``input``, ``output`` = [better, worse]) or GPT-4-LLM's own
  ``comparison_data.json`` (``user_input``, ``completion_a``, ``completion_b``) and
  ``comparison_data_v2.json`` (``user_input``, ``responses_and_scores``). Its ``input`` becomes
  ``context``.

Then quality rules (too short/long, empty or identical responses), exact de-duplication, a
deterministic per-source sample (``seed``, ``num_samples``) with a self-BLEU diversity filter, and a
statistics table like the paper's Table 1, printed and written as JSON.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.feedback import (
    ALPACA_GPT4,
    CHATBOT_ARENA,
    DEFAULT_PATHS,
    HH_RLHF,
    OASST1,
    SOURCES,
    Outcome,
    canonical_source,
    load_rows,
    map_source,
)
from bpo_trainer.records import FeedbackRecord, write_json, write_records


@dataclass
class CollectConfig:
    """Configuration of ``bpo-train collect`` (every field is a command-line flag).

    Example:
        >>> config = CollectConfig(sources=["hh-rlhf"], num_samples=["hh=5"])
        >>> config.sample_sizes()
        {'hh-rlhf': 5}
    """

    output_file: str = field(
        default="data/feedback.jsonl",
        metadata={"help": "Where to write the records (JSONL; a .json suffix writes a JSON list)."},
    )
    stats_file: str | None = field(
        default=None,
        metadata={"help": "Where to write the statistics JSON (default: <output>.stats.json)."},
    )
    sources: list[str] = field(
        default_factory=lambda: list(SOURCES),
        metadata={"help": f"Sources to collect, in this order; any of {', '.join(SOURCES)}."},
    )
    oasst1_path: str = field(
        default=DEFAULT_PATHS[OASST1],
        metadata={"help": "oasst1: hub id or a local .parquet/.json/.jsonl of message-tree rows."},
    )
    hh_rlhf_path: str = field(
        default=DEFAULT_PATHS[HH_RLHF],
        metadata={"help": "hh-rlhf: hub id or a local file with chosen/rejected transcripts."},
    )
    hh_rlhf_data_dir: str | None = field(
        default=None,
        metadata={"help": "hh-rlhf hub subset, e.g. helpful-base or harmless-base (default: all)."},
    )
    chatbot_arena_path: str = field(
        default=DEFAULT_PATHS[CHATBOT_ARENA],
        metadata={"help": "Chatbot Arena: hub id (gated: log in first) or a local file."},
    )
    alpaca_gpt4_path: str = field(
        default=DEFAULT_PATHS[ALPACA_GPT4],
        metadata={"help": "Alpaca-GPT4 comparison data: hub path, URL or local file."},
    )
    split: str = field(default="train", metadata={"help": "Split to read from hub datasets."})
    language: str | None = field(
        default="en",
        metadata={"help": "Keep oasst1/Chatbot Arena rows in this language ('' keeps all)."},
    )
    num_samples: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-source sample sizes as SOURCE=N (e.g. oasst1=3000)."},
    )
    max_per_source: int | None = field(
        default=None,
        metadata={"help": "Sample size for sources not in --num_samples (default: keep all)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampling (same seed, same data)."})
    min_instruction_chars: int = field(
        default=10, metadata={"help": "Drop instructions shorter than this (characters)."}
    )
    max_instruction_chars: int = field(
        default=4000, metadata={"help": "Drop instructions longer than this (characters)."}
    )
    max_response_chars: int = field(
        default=8000, metadata={"help": "Drop pairs with a response longer than this (characters)."}
    )
    self_bleu_threshold: float = field(
        default=60.0,
        metadata={
            "help": "Drop an instruction whose BLEU (0-100) against already kept ones exceeds "
            "this; 0 disables the diversity filter."
        },
    )
    self_bleu_references: int = field(
        default=64,
        metadata={"help": "How many kept instructions (a random sample) each one is compared to."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "datasets cache folder (default: the HF datasets cache)."}
    )

    def __post_init__(self) -> None:
        self.sources = [canonical_source(name) for name in self.sources]
        if len(set(self.sources)) != len(self.sources):
            raise TrainerConfigError(f"--sources lists a source twice: {self.sources}")
        if self.self_bleu_threshold < 0 or self.self_bleu_threshold > 100:
            raise TrainerConfigError(
                f"--self_bleu_threshold must be in [0, 100] (0 disables), got "
                f"{self.self_bleu_threshold}"
            )
        if self.self_bleu_references < 1:
            raise TrainerConfigError("--self_bleu_references must be at least 1")
        self.sample_sizes()

    def sample_sizes(self) -> dict[str, int]:
        """``num_samples`` parsed into ``{source: n}`` (raises naming a malformed entry)."""
        sizes: dict[str, int] = {}
        for entry in self.num_samples:
            name, sep, count = entry.partition("=")
            if not sep or not count.strip().isdigit():
                raise TrainerConfigError(
                    f"--num_samples entry {entry!r} is not SOURCE=N, e.g. oasst1=3000"
                )
            sizes[canonical_source(name)] = int(count)
        return sizes

    def path_of(self, source: str) -> str:
        """The configured path (hub id, URL or file) of ``source``."""
        return {
            OASST1: self.oasst1_path,
            HH_RLHF: self.hh_rlhf_path,
            CHATBOT_ARENA: self.chatbot_arena_path,
            ALPACA_GPT4: self.alpaca_gpt4_path,
        }[source]


# -- quality rules, de-duplication, diversity -----------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def quality_problem(record: FeedbackRecord, config: CollectConfig) -> str | None:
    """Why ``record`` fails the quality rules (``None`` when it passes)."""
    if len(record.instruction) < config.min_instruction_chars:
        return "too_short"
    if len(record.instruction) > config.max_instruction_chars:
        return "too_long"
    if not record.good_res or not record.bad_res:
        return "empty_response"
    if max(len(record.good_res), len(record.bad_res)) > config.max_response_chars:
        return "too_long"
    if _normalize(record.good_res) == _normalize(record.bad_res):
        return "identical_responses"
    return None


def _strip(record: FeedbackRecord) -> FeedbackRecord:
    return FeedbackRecord.create(
        source=record.source,
        instruction=record.instruction.strip(),
        good_res=record.good_res.strip(),
        bad_res=record.bad_res.strip(),
        context=record.context.strip() if record.context is not None else None,
        good_model=record.good_model,
        bad_model=record.bad_model,
    )


class DiversityFilter:
    """Self-BLEU filter: an instruction is kept when its sacrebleu BLEU against the instructions
    kept so far stays at or below ``threshold``.

    For speed each candidate is compared to a random sample of ``references`` kept instructions
    plus (up to 16) kept ones that start with the same three words, where near-duplicates gather.

    Example:
        >>> keep = DiversityFilter(threshold=60, references=8, seed=0)
        >>> keep("Write a poem about the ocean."), keep("Write a poem about the ocean!")
        (True, False)
    """

    _PREFIX_REFERENCES = 16

    def __init__(self, *, threshold: float, references: int = 64, seed: int = 0) -> None:
        from sacrebleu.metrics import BLEU

        self.threshold = threshold
        self.references = references
        self._bleu = BLEU(effective_order=True)
        self._rng = random.Random(seed)
        self._kept: list[str] = []
        self._by_prefix: dict[str, list[str]] = defaultdict(list)

    def score(self, text: str) -> float:
        """BLEU (0-100) of ``text`` against its reference sample (0 when nothing is kept yet)."""
        if not self._kept:
            return 0.0
        sample = (
            self._kept
            if len(self._kept) <= self.references
            else self._rng.sample(self._kept, self.references)
        )
        prefix = self._by_prefix.get(self._prefix(text), [])[-self._PREFIX_REFERENCES :]
        return self._bleu.sentence_score(text, [*sample, *prefix]).score

    def __call__(self, text: str) -> bool:
        """Whether ``text`` is diverse enough; a kept text joins the references."""
        if self.threshold and self.score(text) > self.threshold:
            return False
        self._kept.append(text)
        self._by_prefix[self._prefix(text)].append(text)
        return True

    @staticmethod
    def _prefix(text: str) -> str:
        return " ".join(_normalize(text).split()[:3])


# -- statistics -----------------------------------------------------------------------------------


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (lower-cased)."""
    total, unique = 0, set()
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def describe(records: list[FeedbackRecord]) -> dict[str, float | int]:
    """Count, average word lengths and distinct-1/2 of the instructions of ``records``."""

    def mean(values: list[int]) -> float:
        return round(sum(values) / len(values), 2) if values else 0.0

    instructions = [r.instruction for r in records]
    return {
        "count": len(records),
        "with_context": sum(1 for r in records if r.context),
        "avg_instruction_words": mean([len(t.split()) for t in instructions]),
        "avg_good_res_words": mean([len(r.good_res.split()) for r in records]),
        "avg_bad_res_words": mean([len(r.bad_res.split()) for r in records]),
        "distinct_1": round(distinct_n(instructions, 1), 4),
        "distinct_2": round(distinct_n(instructions, 2), 4),
    }


def stats_table(stats: Mapping[str, Mapping[str, Any]]) -> Table:
    """The statistics as a rich table, one row per source and a total."""
    table = Table(title="Collected feedback data")
    for name in (
        "Source",
        "Rows",
        "Kept",
        "Avg. instr.",
        "Avg. good",
        "Avg. bad",
        "Dist-1",
        "Dist-2",
        "Dropped",
    ):
        table.add_column(name, justify="left" if name in ("Source", "Dropped") else "right")
    for source, row in stats.items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(row.get("dropped", {}).items()))
        table.add_row(
            source,
            str(row.get("rows", "")),
            str(row["count"]),
            f"{row['avg_instruction_words']:.1f}",
            f"{row['avg_good_res_words']:.1f}",
            f"{row['avg_bad_res_words']:.1f}",
            f"{row['distinct_1']:.3f}",
            f"{row['distinct_2']:.3f}",
            dropped,
        )
    return table


# -- the stage ------------------------------------------------------------------------------------


def collect_records(
    outcomes_by_source: Mapping[str, Iterable[Outcome]],
    config: CollectConfig,
    *,
    rows_by_source: Mapping[str, int] | None = None,
    progress: Progress | None = None,
) -> tuple[list[FeedbackRecord], dict[str, dict[str, Any]]]:
    """Apply the quality rules, de-duplication, sampling and diversity filter to mapped sources.

    Returns the kept records (per source, in sampled order) and per-source statistics with drop
    counts by reason. Deterministic for a given ``config.seed``.
    """
    sizes = config.sample_sizes()
    seen: set[tuple[str, str]] = set()
    diversity = DiversityFilter(
        threshold=config.self_bleu_threshold,
        references=config.self_bleu_references,
        seed=config.seed,
    )
    kept_all: list[FeedbackRecord] = []
    stats: dict[str, dict[str, Any]] = {}
    for source, outcomes in outcomes_by_source.items():
        dropped: Counter[str] = Counter()
        candidates: list[FeedbackRecord] = []
        for outcome in outcomes:
            if isinstance(outcome, str):
                dropped[outcome] += 1
                continue
            record = _strip(outcome)
            problem = quality_problem(record, config)
            if problem:
                dropped[problem] += 1
                continue
            key = (_normalize(record.instruction), _normalize(record.context or ""))
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            candidates.append(record)
        random.Random(f"{config.seed}:{source}").shuffle(candidates)
        target = sizes.get(source, config.max_per_source)
        target = len(candidates) if target is None else min(target, len(candidates))
        task = (
            progress.add_task(f"sampling {source}", total=target) if progress is not None else None
        )
        kept: list[FeedbackRecord] = []
        for record in candidates:
            if len(kept) >= target:
                dropped["not_sampled"] += 1
                continue
            if not diversity(record.instruction):
                dropped["similar"] += 1
                continue
            kept.append(record)
            if progress is not None and task is not None:
                progress.advance(task)
        kept_all.extend(kept)
        rows = (rows_by_source or {}).get(source)
        stats[source] = {
            **({"rows": rows} if rows is not None else {}),
            **describe(kept),
            "dropped": dict(sorted(dropped.items())),
        }
    stats["total"] = {
        "rows": sum((rows_by_source or {}).values()) if rows_by_source else None,
        **describe(kept_all),
        "dropped": dict(
            sorted(sum((Counter(s["dropped"]) for s in stats.values()), Counter()).items())
        ),
    }
    if stats["total"]["rows"] is None:
        del stats["total"]["rows"]
    return kept_all, stats


def run_collect(config: CollectConfig, *, console: Console | None = None) -> dict[str, Any]:
    """Collect the configured sources into ``config.output_file`` and write the statistics.

    Returns ``{"output_file", "stats_file", "records", "stats"}``.

    Example:
        >>> import json, pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> rows = [{"chosen": "\\n\\nHuman: What is rabies?\\n\\nAssistant: A viral disease.",
        ...          "rejected": "\\n\\nHuman: What is rabies?\\n\\nAssistant: No idea."}]
        >>> _ = (folder / "hh.jsonl").write_text("\\n".join(json.dumps(r) for r in rows))
        >>> summary = run_collect(CollectConfig(
        ...     sources=["hh-rlhf"], hh_rlhf_path=str(folder / "hh.jsonl"),
        ...     output_file=str(folder / "feedback.jsonl"), cache_dir=str(folder / "cache")),
        ...     console=Console(quiet=True))
        >>> summary["records"]
        1
    """
    console = console or Console(stderr=True)
    outcomes: dict[str, Iterator[Outcome]] = {}
    rows: dict[str, int] = {}
    for source in config.sources:
        dataset = load_rows(
            config.path_of(source),
            source=source,
            split=config.split,
            data_dir=config.hh_rlhf_data_dir if source == HH_RLHF else None,
            cache_dir=config.cache_dir,
        )
        rows[source] = len(dataset)
        outcomes[source] = map_source(source, dataset, language=config.language or None)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        records, stats = collect_records(outcomes, config, rows_by_source=rows, progress=progress)
    output = write_records(config.output_file, (record.to_dict() for record in records))
    stats_file = Path(config.stats_file or output.with_name(output.stem + ".stats.json"))
    write_json(stats_file, {"seed": config.seed, "sources": stats})
    console.print(stats_table(stats))
    console.print(f"wrote {len(records)} records to {output} (statistics: {stats_file})")
    return {
        "output_file": str(output),
        "stats_file": str(stats_file),
        "records": len(records),
        "stats": stats,
    }
