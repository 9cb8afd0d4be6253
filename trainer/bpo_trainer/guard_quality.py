"""Rewrite or keep: what the optimizer sends on, scored against the BPO references.

Each system (copy the prompt, the default optimizer behind a set of guards) is scored with
sacrebleu corpus chrF and BLEU against ``final_output`` of a set of ``val.json`` records, with a
paired percentile bootstrap. :func:`keep_rule_sweep` tunes the keep rule
(:attr:`~bpo_integrations.guards.Guards.min_length_ratio`) on the records outside the dev split:
the model saw those in training, so they serve to choose a threshold and the dev split, never
used for choosing, to report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpo_integrations.guards import GuardFailure, Guards
    from bpo_trainer.guard_report import Output
    from bpo_trainer.prompt_sets import PromptRecord


@dataclass(frozen=True)
class SystemQuality:
    """Corpus chrF and BLEU of one system on a set of records, with bootstrap intervals."""

    name: str
    n: int
    rewritten: int
    chrf: float
    bleu: float
    chrf_ci: tuple[float, float]
    bleu_ci: tuple[float, float]
    chrf_vs_copy_ci: tuple[float, float] | None = None
    bleu_vs_copy_ci: tuple[float, float] | None = None
    fallbacks: dict[str, int] = field(default_factory=dict)


def choose(
    guards: Guards | None, record: PromptRecord, output: Output | None
) -> tuple[str, GuardFailure | None]:
    """What ``BPOOptimizer`` sends on for ``record``: the rewrite, or the prompt when a guard
    rejects it (``guards=None``: copy the prompt), with the context after it; and the reason."""
    from bpo_integrations.template import join_context

    if guards is None or output is None:
        return join_context(record.instruction, record.context or None), None
    reason = guards.check(
        record.instruction,
        output.rewrite,
        finish_reason=output.finish_reason,
        context=record.context or None,
    )
    chosen = record.instruction if reason is not None else output.rewrite
    return join_context(chosen, record.context or None), reason


def bootstrap(
    systems: dict[str, list[str]],
    references: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap (95%) of corpus chrF and BLEU of each system, and of its difference
    from the first system (paired: the same resampled records for every system)."""
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    chrf, bleu = CHRF(), BLEU()
    n = len(references)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    names = list(systems)
    samples: dict[str, dict[str, list[float]]] = {k: {"chrf": [], "bleu": []} for k in names}
    for draw in draws:
        refs = [[references[i] for i in draw]]
        for name in names:
            hyps = [systems[name][i] for i in draw]
            samples[name]["chrf"].append(chrf.corpus_score(hyps, refs).score)
            samples[name]["bleu"].append(bleu.corpus_score(hyps, refs).score)
    out: dict[str, dict[str, Any]] = {}
    base = names[0]
    for name in names:
        entry: dict[str, Any] = {}
        for metric in ("chrf", "bleu"):
            values = np.array(samples[name][metric])
            entry[f"{metric}_ci"] = tuple(float(x) for x in np.percentile(values, [2.5, 97.5]))
            if name != base:
                diff = values - np.array(samples[base][metric])
                entry[f"{metric}_vs_copy_ci"] = tuple(
                    float(x) for x in np.percentile(diff, [2.5, 97.5])
                )
        out[name] = entry
    return out


def _sent_on(
    guards: Guards | None, records: Sequence[PromptRecord], by_key: dict[tuple[str, int], Output]
) -> tuple[list[str], dict[str, int], int]:
    """The texts sent on for ``records``, the fallbacks by reason, and how many were rewritten."""
    texts: list[str] = []
    reasons: dict[str, int] = {}
    rewritten = 0
    for record in records:
        text, reason = choose(guards, record, by_key.get(record.key) if guards else None)
        texts.append(text)
        if reason is not None:
            reasons[reason.reason.value] = reasons.get(reason.reason.value, 0) + 1
        elif guards is not None:
            rewritten += 1
    return texts, reasons, rewritten


def _records_with_outputs(
    records: dict[tuple[str, int], PromptRecord], outputs: Sequence[Output], indices: Sequence[int]
) -> tuple[list[PromptRecord], dict[tuple[str, int], Output]]:
    by_key = {o.key: o for o in outputs if o.template == "bpo"}
    chosen = [records[("val", i)] for i in indices]
    missing = [r.index for r in chosen if r.key not in by_key]
    if missing:
        raise ValueError(f"no saved rewrite for val.json records {missing}: run generate first")
    return chosen, by_key


def system_quality(
    variants: dict[str, Guards | None],
    records: dict[tuple[str, int], PromptRecord],
    outputs: Sequence[Output],
    indices: Sequence[int],
    *,
    resamples: int = 1000,
) -> list[SystemQuality]:
    """Each variant (``None``: copy the prompt; the first is the baseline of the differences)
    scored against ``final_output`` on the ``val.json`` records ``indices``."""
    from bpo_trainer.quality import corpus_scores

    chosen, by_key = _records_with_outputs(records, outputs, indices)
    references = [r.reference_output for r in chosen]
    sent = {name: _sent_on(guards, chosen, by_key) for name, guards in variants.items()}
    intervals = bootstrap({k: v[0] for k, v in sent.items()}, references, resamples=resamples)
    results = []
    for name, (texts, reasons, rewritten) in sent.items():
        chrf, bleu = corpus_scores(texts, references)
        extra = intervals[name]
        results.append(
            SystemQuality(
                name=name,
                n=len(chosen),
                rewritten=rewritten,
                chrf=chrf,
                bleu=bleu,
                chrf_ci=extra["chrf_ci"],
                bleu_ci=extra["bleu_ci"],
                chrf_vs_copy_ci=extra.get("chrf_vs_copy_ci"),
                bleu_vs_copy_ci=extra.get("bleu_vs_copy_ci"),
                fallbacks=reasons,
            )
        )
    return results


def quality_table(rows: Sequence[SystemQuality]) -> str:
    """The markdown table of :func:`system_quality`."""

    def ci(pair: tuple[float, float] | None) -> str:
        return "–" if pair is None else f"[{pair[0]:+.1f}, {pair[1]:+.1f}]"

    lines = [
        "| system | chrF [95% CI] | BLEU [95% CI] | chrF − copy [95% CI] | BLEU − copy [95% CI] "
        "| rewritten | fallbacks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(row.fallbacks.items())) or "–"
        lines.append(
            f"| {row.name} | {row.chrf:.1f} [{row.chrf_ci[0]:.1f}, {row.chrf_ci[1]:.1f}] | "
            f"{row.bleu:.1f} [{row.bleu_ci[0]:.1f}, {row.bleu_ci[1]:.1f}] | "
            f"{ci(row.chrf_vs_copy_ci)} | {ci(row.bleu_vs_copy_ci)} | {row.rewritten}/{row.n} | "
            f"{fallbacks} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class KeepRulePoint:
    """The keep rule at one threshold: corpus gains over the copy and rewrites sent on."""

    min_length_ratio: float
    chrf_gain: float
    bleu_gain: float
    rewritten: int
    n: int


def keep_rule_sweep(
    records: dict[tuple[str, int], PromptRecord],
    outputs: Sequence[Output],
    indices: Sequence[int],
    thresholds: Sequence[float] = tuple(round(1 + 0.1 * i, 1) for i in range(21)),
) -> list[KeepRulePoint]:
    """``Guards(min_length_ratio=t)`` for each threshold ``t`` (0: the rule off) on the
    ``val.json`` records ``indices``: chrF and BLEU gained over copying the prompt."""
    from bpo_integrations.guards import Guards
    from bpo_trainer.quality import corpus_scores

    chosen, by_key = _records_with_outputs(records, outputs, indices)
    references = [r.reference_output for r in chosen]
    copy_chrf, copy_bleu = corpus_scores(_sent_on(None, chosen, by_key)[0], references)
    points = []
    for threshold in (0.0, *thresholds):
        texts, _, rewritten = _sent_on(Guards(min_length_ratio=threshold), chosen, by_key)
        chrf, bleu = corpus_scores(texts, references)
        points.append(
            KeepRulePoint(threshold, chrf - copy_chrf, bleu - copy_bleu, rewritten, len(chosen))
        )
    return points


def best_threshold(points: Sequence[KeepRulePoint]) -> KeepRulePoint:
    """The threshold that gains the most chrF and BLEU together while at least half the prompts
    are still rewritten (the issue's floor)."""
    allowed = [p for p in points if 2 * p.rewritten >= p.n]
    return max(allowed, key=lambda p: p.chrf_gain + p.bleu_gain)


def sweep_table(points: Sequence[KeepRulePoint]) -> str:
    """The markdown table of :func:`keep_rule_sweep`, the chosen threshold in bold."""
    best = best_threshold(points)
    lines = [
        "| min_length_ratio | chrF − copy | BLEU − copy | sum | rewritten |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        mark = "**" if p == best else ""
        lines.append(
            f"| {mark}{p.min_length_ratio:g}{mark} | {p.chrf_gain:+.2f} | {p.bleu_gain:+.2f} | "
            f"{p.chrf_gain + p.bleu_gain:+.2f} | {p.rewritten}/{p.n} |"
        )
    return "\n".join(lines)


__all__ = [
    "KeepRulePoint",
    "SystemQuality",
    "best_threshold",
    "bootstrap",
    "choose",
    "keep_rule_sweep",
    "quality_table",
    "sweep_table",
    "system_quality",
]


CARD_SECTION_START = "<!-- guard_report: dev quality with the shipped guards -->"
CARD_SECTION_END = "<!-- /guard_report -->"


def card_section(rows: Sequence[SystemQuality], *, resamples: int) -> str:
    """The model card's section on what ``BPOOptimizer()`` sends on, from a ``report`` run."""
    return "\n".join(
        [
            CARD_SECTION_START,
            "## Quality with the shipped guards and keep rule",
            "",
            "Written by `python -m bpo_trainer.guard_report report --card ...` from the saved "
            "rewrites of the default decoding: what the middleware sends on (the rewrite, or the "
            "prompt where a guard rejects it, with the context after it) on the dev split, "
            f"against `final_output`; 95% percentile bootstrap intervals over {resamples} "
            "resamples, paired with copying the prompt. The keep rule's threshold was chosen on "
            "the other `val.json` records (the model's training data), not on these.",
            "",
            quality_table(rows),
            CARD_SECTION_END,
        ]
    )


def update_card(path: str | Path, section: str) -> None:
    """Put ``section`` into the card at ``path``, in place of the one an earlier run wrote."""
    card = Path(path)
    text = card.read_text(encoding="utf-8")
    start, end = text.find(CARD_SECTION_START), text.find(CARD_SECTION_END)
    if start != -1 and end != -1:
        text = text[:start] + section + text[end + len(CARD_SECTION_END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    card.write_text(text, encoding="utf-8")
