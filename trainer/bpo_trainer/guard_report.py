"""How well the optimizer's guards judge real rewrites, and what a "rewrite or keep" rule is worth.

::

    python -m bpo_trainer.guard_report generate   # the default optimizer's rewrites (resumes)
    python -m bpo_trainer.guard_report report     # the guard table and the dev-split scores

``generate`` runs the shipped default optimizer (:class:`~bpo_integrations.backends.local.
LocalBackend` with its recommended decoding, as ``BPOOptimizer()`` does) over the BPO prompts of
``$BPO_SHARED_DIR/data/bpo`` and appends one JSON line per prompt: which prompt (its set and
index, never its text), the cleaned rewrite and why generation stopped. A second run skips what
the file already holds. ``--template chat`` wraps the prompts in SmolLM2's chat template instead,
the served path's failure mode where the model answers the prompt.

``report`` applies each guard on its own to those rewrites and to the 300 ChatGPT rewrites of
``val.json`` (``optimized_prompt``, good rewrites: a guard that rejects them rejects good work),
then scores copy / the default / the default with the new guards / with the keep rule too on the
dev split with sacrebleu chrF and BLEU and a bootstrap confidence interval
(:mod:`bpo_trainer.guard_quality`), and tunes the keep rule on the other ``val.json`` records.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION, Precision
from bpo_trainer.guard_quality import (
    SystemQuality,
    best_threshold,
    card_section,
    keep_rule_sweep,
    quality_table,
    sweep_table,
    system_quality,
    update_card,
)
from bpo_trainer.prompt_sets import (
    PromptRecord,
    dev_indices,
    load_prompts,
    load_records,
)
from bpo_trainer.recipe.config import resolve_shared_dir

if TYPE_CHECKING:
    from bpo_integrations.guards import Guards

logger = logging.getLogger(__name__)

# -- the optimizer's outputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One saved rewrite: which prompt, the template, the cleaned rewrite, why it stopped."""

    set: str
    index: int
    template: str
    rewrite: str
    finish_reason: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.set, self.index)

    def to_json(self) -> str:
        return json.dumps(
            {
                "set": self.set,
                "index": self.index,
                "template": self.template,
                "rewrite": self.rewrite,
                "finish_reason": self.finish_reason,
            },
            ensure_ascii=False,
        )


def read_outputs(path: str | Path) -> list[Output]:
    """The outputs saved in a JSONL file (missing file: none)."""
    path = Path(path)
    if not path.is_file():
        return []
    outputs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            outputs.append(Output(**{k: row[k] for k in Output.__dataclass_fields__}))
    return outputs


def generate_outputs(
    records: Sequence[PromptRecord],
    path: str | Path,
    *,
    template: Literal["bpo", "chat"] = "bpo",
    precision: Precision = DEFAULT_PRECISION,
    chunk: int = 8,
) -> list[Output]:
    """Rewrite ``records`` with the shipped default model, appending to ``path`` chunk by chunk.

    A record whose (set, index, template) is already in the file is not rewritten again, so a
    run that stopped resumes where it was, losing at most one chunk.
    """
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.postprocess import clean_completion

    path = Path(path)
    done = {(o.set, o.index, o.template) for o in read_outputs(path)}
    todo = [r for r in records if (r.set, r.index, template) not in done]
    if not todo:
        return read_outputs(path)
    backend = LocalBackend(template=template, precision=precision)
    settings = backend.recommended_settings()
    assert settings is not None, "the shipped default model recommends its decoding"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            generations = backend.generate([r.instruction for r in part], settings)
            with path.open("a", encoding="utf-8") as handle:
                for record, generation in zip(part, generations, strict=True):
                    output = Output(
                        record.set,
                        record.index,
                        template,
                        clean_completion(generation.text, cut_markers=settings.stop),
                        generation.finish_reason,
                    )
                    handle.write(output.to_json() + "\n")
            logger.info("%d/%d rewritten (%s template)", start + len(part), len(todo), template)
    finally:
        backend.close()
    return read_outputs(path)


# -- judging the rewrites -------------------------------------------------------------------------


EXISTING = "runaway_output / empty_output / lost_protected_content (existing)"
"""The row of the guards that were there before the content checks."""


def guard_set() -> dict[str, Guards]:
    """Each new guard on its own, the existing ones together, all of them (``Guards()``), and
    all of them with the keep rule (the default model's guards)."""
    from bpo_integrations.guards import DEFAULT_MODEL_GUARDS, NO_GUARDS, Guards

    default = Guards()
    return {
        EXISTING: replace(
            default,
            reject_answers=False,
            reject_invented=False,
            min_kept_content=0.0,
            reject_repeats=False,
        ),
        "answered_instead": replace(NO_GUARDS, reject_answers=True),
        "invented_content": replace(NO_GUARDS, reject_invented=True),
        "changed_intent": replace(NO_GUARDS, min_kept_content=default.min_kept_content),
        "repeated_text": replace(NO_GUARDS, reject_repeats=True),
        "all (the default Guards())": default,
        "not_improved (the keep rule alone)": replace(
            NO_GUARDS, min_length_ratio=DEFAULT_MODEL_GUARDS.min_length_ratio
        ),
        "all + the keep rule (BPOOptimizer()'s DEFAULT_MODEL_GUARDS)": DEFAULT_MODEL_GUARDS,
    }


def reference_rewrite(record: PromptRecord) -> str:
    """ChatGPT's rewrite of a ``val.json`` record, cleaned as the optimizer cleans a completion."""
    from bpo_integrations.postprocess import clean_completion

    return clean_completion(record.reference)


@dataclass(frozen=True)
class Rejection:
    """One rewrite a guard rejected."""

    guard: str
    set: str
    index: int
    rewrite: str
    reason: str


@dataclass
class GuardRow:
    """How often one guard rejects each group of rewrites (``counts[group] = (rejected, n)``)."""

    guard: str
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)


def output_groups(outputs: Sequence[Output], dev: set[int]) -> dict[str, list[Output]]:
    """The saved rewrites by group: the dev split, the rest of ``val.json``, the test sets, and
    the chat-template rewrites."""
    groups: dict[str, list[Output]] = {}
    for output in outputs:
        if output.template == "chat":
            name = "chat template"
        elif output.set == "val":
            name = "dev" if output.index in dev else "val (train)"
        else:
            name = "test sets"
        groups.setdefault(name, []).append(output)
    return groups


def judge(
    records: dict[tuple[str, int], PromptRecord],
    outputs: Sequence[Output],
    dev: set[int],
) -> list[GuardRow]:
    """Each guard of :func:`guard_set` on the saved rewrites and on the 300 reference rewrites."""
    groups = output_groups(outputs, dev)
    references = [r for key, r in sorted(records.items()) if key[0] == "val"]
    rows = []
    for name, guards in guard_set().items():
        row = GuardRow(name)
        for group, members in groups.items():
            rejected = 0
            for output in members:
                record = records[output.key]
                reason = guards.check(
                    record.instruction,
                    output.rewrite,
                    finish_reason=output.finish_reason,
                    context=record.context or None,
                )
                if reason is not None:
                    rejected += 1
                    row.rejections.append(
                        Rejection(name, group, output.index, output.rewrite, reason)
                    )
            row.counts[group] = (rejected, len(members))
        rejected = 0
        for record in references:
            reason = guards.check(
                record.instruction, reference_rewrite(record), context=record.context or None
            )
            if reason is not None:
                rejected += 1
                row.rejections.append(
                    Rejection(name, "ChatGPT references", record.index, record.reference, reason)
                )
        row.counts["ChatGPT references"] = (rejected, len(references))
        rows.append(row)
    return rows


def guard_table(rows: Sequence[GuardRow]) -> str:
    """The markdown table of :func:`judge`: one row per guard, one column per group."""
    groups = list(rows[0].counts)
    lines = [
        "| guard | " + " | ".join(groups) + " |",
        "| --- |" + " ---: |" * len(groups),
    ]
    for row in rows:
        cells = [f"{row.counts[g][0]}/{row.counts[g][1]}" for g in groups]
        lines.append(f"| {row.guard} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- rewrite or keep: quality on the dev split ----------------------------------------------------


def quality_variants() -> dict[str, Guards | None]:
    """The systems of :func:`dev_quality`: copy, the existing guards, ``Guards()``, and the
    default model's guards (``Guards()`` with the keep rule)."""
    from bpo_integrations.guards import DEFAULT_MODEL_GUARDS, Guards

    return {
        "copy the prompt": None,
        "default optimizer (existing guards)": guard_set()[EXISTING],
        "default optimizer + new guards (fallback: copy)": Guards(),
        "default optimizer + new guards + keep rule (BPOOptimizer()'s)": DEFAULT_MODEL_GUARDS,
    }


def dev_quality(
    records: dict[tuple[str, int], PromptRecord],
    outputs: Sequence[Output],
    indices: Sequence[int],
    *,
    resamples: int = 1000,
) -> list[SystemQuality]:
    """Each of :func:`quality_variants` against ``final_output`` on the records ``indices``."""
    return system_quality(quality_variants(), records, outputs, indices, resamples=resamples)


# -- the command line -----------------------------------------------------------------------------


@dataclass
class GuardReportConfig:
    """Options of ``python -m bpo_trainer.guard_report``."""

    command: Literal["generate", "report"] = field(
        default="report", metadata={"help": "generate: rewrite the prompts; report: the tables."}
    )
    outputs: str = field(
        default="tests/fixtures/default_optimizer_outputs.jsonl",
        metadata={"help": "The JSONL file of the default optimizer's rewrites."},
    )
    shared_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding data/bpo; unset: $BPO_SHARED_DIR or ../shared."},
    )
    sets: list[str] = field(
        default_factory=lambda: ["val", "vicuna", "dolly", "self_instruct"],
        metadata={"help": "Prompt sets to rewrite (generate)."},
    )
    limit: int = field(
        default=100, metadata={"help": "Prompts per test set (dolly, self_instruct, vicuna)."}
    )
    template: Literal["bpo", "chat"] = field(
        default="bpo", metadata={"help": "bpo: the default; chat: SmolLM2's chat template."}
    )
    chat_limit: int = field(
        default=0, metadata={"help": "With --template chat: the dev split plus N vicuna prompts."}
    )
    precision: Precision = field(
        default=DEFAULT_PRECISION,
        metadata={"help": "How the model's weights are stored (generate): f16, q8_0 or q4_0."},
    )
    resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples (report)."})
    report_file: str | None = field(
        default=None, metadata={"help": "Also write every rejection and score as JSON here."}
    )
    card: str | None = field(
        default=None, metadata={"help": "Also put the dev table into this model card (README)."}
    )


def select(config: GuardReportConfig, shared: Path) -> list[PromptRecord]:
    """The prompts ``generate`` rewrites for ``config``."""
    chosen: list[PromptRecord] = []
    if config.template == "chat":
        dev = set(dev_indices())
        chosen += [r for r in load_prompts(shared, "val") if r.index in dev]
        chosen += load_prompts(shared, "vicuna")[: config.chat_limit]
        return chosen
    dev = set(dev_indices())
    for name in config.sets:
        records = load_prompts(shared, name)
        if name == "val":  # the dev split first: the scores need it
            chosen += sorted(records, key=lambda r: r.index not in dev)
        else:
            chosen += records[: config.limit]
    return chosen


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m bpo_trainer.guard_report {generate,report} [--option value ...]``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        GuardReportConfig,
        prog="python -m bpo_trainer.guard_report",
        description="The default optimizer's rewrites, and how the guards judge them.",
    )
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = ["--command", args[0], *args[1:]]
    (config,) = parser.parse_args_into_dataclasses(args=args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    shared = resolve_shared_dir(config.shared_dir)
    if config.command == "generate":
        outputs = generate_outputs(
            select(config, shared),
            config.outputs,
            template=config.template,
            precision=config.precision,
        )
        print(f"{len(outputs)} rewrites in {config.outputs}")
        return 0
    records = load_records(shared)
    outputs = read_outputs(config.outputs)
    if not outputs:
        sys.stderr.write(f"error: no rewrites in {config.outputs}: run generate first\n")
        return 2
    dev = dev_indices()
    rows = judge(records, outputs, set(dev))
    quality = dev_quality(records, outputs, dev, resamples=config.resamples)
    done = {o.index for o in outputs if o.set == "val" and o.template == "bpo"}
    train = sorted(done - set(dev))
    train_quality = (
        dev_quality(records, outputs, train, resamples=config.resamples) if train else []
    )
    sweep = keep_rule_sweep(records, outputs, train) if train else []
    print("Rejections by guard (each guard alone):\n")
    print(guard_table(rows))
    print("\nQuality on the dev split (sacrebleu corpus scores against final_output):\n")
    print(quality_table(quality))
    if train_quality:
        print(
            f"\nThe same on the {len(train)} other val.json records rewritten (the model was "
            "trained on them: for comparing the fallback rules only):\n"
        )
        print(quality_table(train_quality))
        print(
            f"\nThe keep rule tuned on those {len(train)} records (Guards() with min_length_ratio;"
            f" chosen: {best_threshold(sweep).min_length_ratio:g}, the most chrF + BLEU with at "
            "least half rewritten):\n"
        )
        print(sweep_table(sweep))
    if config.report_file:
        report = {
            "guards": [asdict(r) for r in rows],
            "quality": [asdict(q) for q in quality],
            "train_quality": [asdict(q) for q in train_quality],
            "keep_rule_sweep": [asdict(p) for p in sweep],
        }
        Path(config.report_file).write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"\nevery rejection: {config.report_file}")
    if config.card:
        update_card(config.card, card_section(quality, resamples=config.resamples))
        print(f"\nthe dev table is in {config.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
