"""Stage ``process``: ChatGPT's answers parsed into (prompt, optimized prompt) training pairs.

Follows thu-coai/BPO ``process_optimized_prompts.py``:

- the answer is cut at ``[END]`` and split at ``Optimized Instruction:``: the first part is the
  ``comparison``, the second (unquoted when it is one string literal, then stripped) the
  ``optimized_prompt``; an answer without ``Optimized Instruction:`` is dropped;
- records without a context field are dropped when the optimized prompt lost too much (the
  instruction has more than ``max_shrink_ratio`` = 2 times its words) or grew too much (more than
  ``max_growth_ratio`` = 6 times), or when it contains a ``[protected`` marker;
- records with a context field (Alpaca-GPT4) place the untouched context in both sides of the pair:
  not at all when it is empty or already inside the optimized prompt, after a newline when either
  instruction mentions "follow" or the instruction ends with ``:``, otherwise in one of six layouts
  drawn at random with the reference's probabilities (seeded per record, so reruns agree).

The output has the released BPO data's fields, ``final_input`` -> ``final_output`` being the
training pair, and a report says how many records were dropped and why.
"""

from __future__ import annotations

import ast
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.prompts import has_context_field
from bpo_trainer.records import read_records, write_json, write_records

END_MARKER = "[END]"
OPTIMIZED_MARKER = "Optimized Instruction:"
PROTECTED_MARKER = "[protected"

_KEPT_FIELDS = (
    "id",
    "source",
    "instruction",
    "context",
    "good_res",
    "good_model",
    "bad_res",
    "bad_model",
)


@dataclass
class ProcessConfig:
    """Configuration of ``bpo-train process`` (every field is a command-line flag).

    Example:
        >>> ProcessConfig(input_file="constructed.jsonl").max_shrink_ratio
        2.0
    """

    input_file: str = field(
        default="data/constructed.jsonl",
        metadata={"help": "The answers `bpo-train construct` wrote (records with a `response`)."},
    )
    output_file: str = field(
        default="data/bpo_train.jsonl",
        metadata={"help": "Where to write the training pairs (JSONL; .json writes a JSON list)."},
    )
    report_file: str | None = field(
        default=None,
        metadata={"help": "Where to write the drop report (default: <output>.report.json)."},
    )
    response_field: str = field(
        default="response", metadata={"help": "The field that holds the raw answer."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of the random context layouts (per record)."}
    )
    max_shrink_ratio: float = field(
        default=2.0,
        metadata={"help": "Drop when instruction words / optimized words exceed this (0: off)."},
    )
    max_growth_ratio: float = field(
        default=6.0,
        metadata={"help": "Drop when optimized words / instruction words exceed this (0: off)."},
    )
    filter_context_records: bool = field(
        default=False,
        metadata={
            "help": "Apply the length and [protected filters to records with a context too "
            "(the reference applies them only to records without one)."
        },
    )

    def __post_init__(self) -> None:
        if self.max_shrink_ratio < 0 or self.max_growth_ratio < 0:
            raise TrainerConfigError("--max_shrink_ratio and --max_growth_ratio must be >= 0")


@dataclass(frozen=True)
class ParsedAnswer:
    """The two halves of a construction answer."""

    comparison: str
    optimized_prompt: str


def parse_answer(answer: str) -> ParsedAnswer | None:
    """Split ``"Detailed Comparison Result: ... Optimized Instruction: ... [END]"``.

    ``None`` when the answer has no ``Optimized Instruction:``. A quoted optimized prompt that is
    one Python string literal is unquoted (the reference ``eval``s it; this uses
    ``ast.literal_eval``, which runs no code).

    Example:
        >>> parse_answer('Detailed Comparison Result: ok\\nOptimized Instruction: "Say hi." [END]')
        ParsedAnswer(comparison='Detailed Comparison Result: ok\\n', optimized_prompt='Say hi.')
    """
    text = answer.split(END_MARKER)[0]
    if OPTIMIZED_MARKER not in text:
        return None
    parts = text.split(OPTIMIZED_MARKER)
    return ParsedAnswer(comparison=parts[0], optimized_prompt=_unquote(parts[1]))


def _unquote(raw: str) -> str:
    try:
        value = ast.literal_eval(raw.lstrip(" \t"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw.strip()
    return value.strip() if isinstance(value, str) else raw.strip()


def length_problem(
    instruction: str, optimized: str, *, max_shrink_ratio: float, max_growth_ratio: float
) -> str | None:
    """``"shrunk"``/``"grown"`` when the word-count ratio is past a limit, else ``None``."""
    before, after = len(instruction.split()), len(optimized.split())
    if after == 0:
        return "empty_optimized"
    if before == 0:
        return "empty_instruction"
    if max_shrink_ratio and before / after > max_shrink_ratio:
        return "shrunk"
    if max_growth_ratio and after / before > max_growth_ratio:
        return "grown"
    return None


RANDOM_LAYOUTS = (
    "instruction\\ncontext",
    "context\\ninstruction",
    "instruction context",
    "context instruction",
    'instruction "context"',
    'context "instruction"',
)
"""The layouts drawn at random for a context, with probabilities 1/4, 1/4, 1/16, 1/16, 3/16, 3/16
(the reference's nested ``random.random()`` draws)."""


def context_layouts(instruction: str, context: str, optimized: str) -> dict[str, tuple[str, str]]:
    """Every random layout of ``context`` as ``{name: (final_input, final_output)}``.

    ``context "instruction"`` quotes the instruction, as in the released BPO data (the current
    reference script quotes the context instead).
    """

    def both(fmt: str) -> tuple[str, str]:
        return (
            fmt.format(i=instruction, c=context).strip(),
            fmt.format(i=optimized, c=context).strip(),
        )

    return dict(
        zip(
            RANDOM_LAYOUTS,
            (
                both("{i}\n{c}"),
                both("{c}\n{i}"),
                both("{i} {c}"),
                both("{c} {i}"),
                both('{i} "{c}"'),
                both('{c} "{i}"'),
            ),
            strict=True,
        )
    )


def place_context(
    instruction: str, context: str, optimized: str, rng: random.Random
) -> tuple[str, str, str]:
    """``(final_input, final_output, layout)`` for a record with a context field."""
    if not context:
        return instruction, optimized, "no_context"
    if context.lower() in optimized.lower():
        return f"{instruction}\n{context}".strip(), optimized, "context_in_optimized"
    layouts = context_layouts(instruction, context, optimized)
    if "follow" in optimized or "follow" in instruction or instruction.endswith(":"):
        return (*layouts["instruction\\ncontext"], "instruction\\ncontext (forced)")
    if rng.random() < 0.5:
        name = RANDOM_LAYOUTS[0] if rng.random() < 0.5 else RANDOM_LAYOUTS[1]
    elif rng.random() < 0.25:
        name = RANDOM_LAYOUTS[2] if rng.random() < 0.5 else RANDOM_LAYOUTS[3]
    else:
        name = RANDOM_LAYOUTS[4] if rng.random() < 0.5 else RANDOM_LAYOUTS[5]
    return (*layouts[name], name)


@dataclass(frozen=True)
class Processed:
    """One kept training record and the context layout it got."""

    record: dict[str, Any]
    layout: str


def process_record(record: Mapping[str, Any], config: ProcessConfig) -> Processed | str:
    """The training record for one construction answer, or the reason it is dropped."""
    answer = record.get(config.response_field)
    if not isinstance(answer, str) or not answer.strip():
        return "no_answer"
    parsed = parse_answer(answer)
    if parsed is None:
        return "no_optimized_instruction"
    instruction, optimized = record["instruction"], parsed.optimized_prompt
    if not optimized:
        return "empty_optimized"
    with_context = has_context_field(record)
    if not with_context or config.filter_context_records:
        problem = length_problem(
            instruction,
            optimized,
            max_shrink_ratio=config.max_shrink_ratio,
            max_growth_ratio=config.max_growth_ratio,
        )
        if problem:
            return problem
        if PROTECTED_MARKER in optimized.lower():
            return "protected_marker"
    if with_context:
        rng = random.Random(f"{config.seed}:{record.get('id', instruction)}")
        final_input, final_output, layout = place_context(
            instruction, record["context"], optimized, rng
        )
    else:
        final_input, final_output, layout = instruction, optimized, "no_context"
    out = {key: record[key] for key in _KEPT_FIELDS if record.get(key) is not None}
    out.update(
        comparison=parsed.comparison,
        optimized_prompt=optimized,
        final_input=final_input,
        final_output=final_output,
    )
    return Processed(out, layout)


def process_records(
    records: Iterable[Mapping[str, Any]], config: ProcessConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Process ``records``; returns the kept training records and the report."""
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    layouts: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    seen: set[Any] = set()
    total = 0
    for record in records:
        total += 1
        missing = [key for key in ("instruction",) if key not in record]
        if missing:
            raise TrainerConfigError(
                f"record {record.get('id', total)!r} lacks {', '.join(missing)}: process reads "
                "the records `bpo-train construct` writes"
            )
        source = str(record.get("source", "unknown"))
        if "id" in record and record["id"] in seen:
            outcome: Processed | str = "duplicate"
        else:
            seen.add(record.get("id"))
            outcome = process_record(record, config)
        if isinstance(outcome, str):
            dropped[outcome] += 1
            by_source[source][outcome] += 1
            continue
        kept.append(outcome.record)
        layouts[outcome.layout] += 1
        by_source[source]["kept"] += 1
    report = {
        "input": total,
        "kept": len(kept),
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dict(dropped.most_common()),
        "by_source": {source: dict(counts) for source, counts in sorted(by_source.items())},
        "context_layouts": dict(layouts.most_common()),
    }
    return kept, report


def report_table(report: Mapping[str, Any]) -> Table:
    """The report as a rich table: kept and dropped counts per source and reason."""
    reasons = list(report["dropped_by_reason"])
    table = Table(title=f"Processed {report['input']} answers: kept {report['kept']}")
    for name in ("Source", "Kept", *reasons):
        table.add_column(name, justify="left" if name == "Source" else "right")
    for source, counts in report["by_source"].items():
        table.add_row(source, str(counts.get("kept", 0)), *(str(counts.get(r, 0)) for r in reasons))
    return table


def run_process(config: ProcessConfig, *, console: Console | None = None) -> dict[str, Any]:
    """Turn ``config.input_file``'s answers into training pairs; returns the report with the
    ``output_file`` and ``report_file`` paths.

    Example:
        >>> import json, pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> answer = "Detailed Comparison Result: ...\\nOptimized Instruction: Name a planet. [END]"
        >>> _ = (folder / "in.jsonl").write_text(json.dumps(
        ...     {"id": "a", "instruction": "Name planet", "response": answer}) + "\\n")
        >>> report = run_process(ProcessConfig(
        ...     input_file=str(folder / "in.jsonl"), output_file=str(folder / "out.jsonl")),
        ...     console=Console(quiet=True))
        >>> report["kept"], json.loads((folder / "out.jsonl").read_text())["final_output"]
        (1, 'Name a planet.')
    """
    console = console or Console(stderr=True)
    try:
        records = read_records(config.input_file)
    except (FileNotFoundError, ValueError) as error:
        raise TrainerConfigError(str(error)) from error
    kept, report = process_records(records, config)
    output = write_records(config.output_file, kept)
    report_file = Path(config.report_file or output.with_name(output.stem + ".report.json"))
    report = {**report, "output_file": str(output), "report_file": str(report_file)}
    write_json(report_file, report)
    console.print(report_table(report))
    console.print(f"wrote {len(kept)} training pairs to {output} (report: {report_file})")
    return report
