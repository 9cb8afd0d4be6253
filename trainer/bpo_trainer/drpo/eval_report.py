"""The ``drpo-eval`` report: the mean of each just-eval aspect per test set and variant, as a
markdown table (``report.md``), JSON (``summary.json``) and a PNG chart (``aspects.png``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_trainer.drpo.just_eval import ALL_ASPECTS, MULTI_ASPECTS

if TYPE_CHECKING:
    from bpo_integrations.drpo import DRPOAligner
    from bpo_trainer.drpo.evaluate import DRPOEvalConfig
    from bpo_trainer.evaluate.runtime import RunState

ALL = "All"
"""The test-set name of the rows over all test sets."""


def mean_scores(
    records: Sequence[dict[str, Any]], variants: Sequence[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (test set, variant), and per variant over all sets (``All``): the mean of each
    aspect over the answers that have a score for it, ``n`` and the unreadable judgments."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    testsets = list(dict.fromkeys(r["testset"] for r in records))
    for record in records:
        groups.setdefault((record["testset"], record["variant"]), []).append(record)
        if len(testsets) > 1:
            groups.setdefault((ALL, record["variant"]), []).append(record)
    order = [*testsets, *([ALL] if len(testsets) > 1 else [])]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for testset in order:
        for variant in variants:
            rows = groups.get((testset, variant))
            if not rows:
                continue
            means: dict[str, float] = {}
            for aspect in ALL_ASPECTS:
                values = [r["scores"][aspect] for r in rows if aspect in r["scores"]]
                if values:
                    means[aspect] = sum(values) / len(values)
            quality = [means[a] for a in MULTI_ASPECTS if a in means]
            table[(testset, variant)] = {
                "testset": testset,
                "variant": variant,
                "n": len(rows),
                "invalid": sum(1 for r in rows if not r["scores"]),
                "means": means,
                "overall": sum(quality) / len(quality) if quality else math.nan,
            }
    return table


def markdown_table(table: dict[tuple[str, str], dict[str, Any]]) -> str:
    aspects = [a for a in ALL_ASPECTS if any(a in row["means"] for row in table.values())]
    header = ["Test set", "Variant", "n", *[a.capitalize() for a in aspects], "Mean", "Invalid"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.values():
        cells = [
            row["testset"],
            row["variant"],
            str(row["n"]),
            *[f"{row['means'][a]:.2f}" if a in row["means"] else "-" for a in aspects],
            "-" if math.isnan(row["overall"]) else f"{row['overall']:.2f}",
            str(row["invalid"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_aspects(
    table: dict[tuple[str, str], dict[str, Any]], path: Path, *, title: str = ""
) -> Path:
    """Grouped bars: the mean of each aspect per variant, over all test sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    testsets = [t for t, _ in table]
    scope = ALL if ALL in testsets else testsets[0]
    rows = {variant: row for (testset, variant), row in table.items() if testset == scope}
    aspects = [a for a in ALL_ASPECTS if any(a in row["means"] for row in rows.values())]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(aspects), 4))
    for number, (variant, row) in enumerate(rows.items()):
        positions = [i + (number - (len(rows) - 1) / 2) * width for i in range(len(aspects))]
        values = [row["means"].get(a, 0.0) for a in aspects]
        bars = ax.bar(positions, values, width=width, label=variant)
        for bar, value in zip(bars, values, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                value + 0.05,
                f"{value:.2f}",
                ha="center",
                fontsize=7,
            )
    ax.set_xticks(range(len(aspects)))
    ax.set_xticklabels([a.capitalize() for a in aspects])
    ax.set_ylim(0, 5.5)
    ax.set_ylabel(f"mean score (1-5), {scope}")
    ax.legend(frameon=False, ncol=len(rows), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    if title:
        ax.set_title(title, pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    config: DRPOEvalConfig,
    aligner: DRPOAligner,
    records: Sequence[dict[str, Any]],
    run: RunState[DRPOEvalConfig],
    items: int,
) -> tuple[Path, Path | None, dict[str, Any]]:
    out = Path(config.output_dir)
    table = mean_scores(records, config.variants)
    chart = None
    if table:
        chart = plot_aspects(
            table, out / "aspects.png", title=f"{config.answer_model}: with and without DRPO"
        )
    invalid = [r for r in records if not r["scores"]]
    summary = {
        "config": asdict(config),
        "results": [
            {**row, "overall": None if math.isnan(row["overall"]) else row["overall"]}
            for row in table.values()
        ],
        "invalid_judgments": len(invalid),
        "invalid_examples": [
            {
                "testset": r["testset"],
                "id": r["id"],
                "variant": r["variant"],
                "parse_error": r["parse_error"],
                "judgment": r["judgment"][:300],
            }
            for r in invalid[:5]
        ],
        "run": {
            "prompts": items,
            "new_calls": dict(run.new_calls),
            "failed_calls": dict(run.failures),
            "first_errors": dict(run.errors),
            "usage_total": {role: u.to_dict() for role, u in run.total.items()},
        },
    }
    (out / "summary.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8"
    )
    lines = [
        "# DRPO evaluation: answers with and without the alignment instruction",
        "",
        f"- Alignment: {config.artifact} ({len(aligner.artifact.examples)} examples, "
        f"k={aligner.k})",
        f"- Answering model: {config.answer_model} ({config.answer_backend}; temperature "
        f"{config.answer_temperature}, max {config.answer_max_tokens} tokens)",
        f"- Judge: {config.judge_model} ({config.judge_backend}) with just-eval's multi-aspect "
        "prompt" + (" and safety prompt" if config.safety_testsets else ""),
        f"- Variants: {', '.join(config.variants)}",
        "",
        "## Mean aspect scores (1-5)",
        "",
        "Mean = the mean of helpfulness, clarity, factuality, depth and engagement. Invalid = "
        "judgments without a readable score (left out of the means).",
        "",
        markdown_table(table) if table else "No answer was scored.",
    ]
    if chart is not None:
        lines += ["", f"![aspects]({chart.name})"]
    lines += [
        "",
        "## Run",
        "",
        f"- Prompts: {items}; scored answers: {len(records)}; invalid judgments: {len(invalid)}",
        "- New calls this run: " + ", ".join(f"{k} {v}" for k, v in run.new_calls.items()),
        "- Failed after retries: " + ", ".join(f"{k} {v}" for k, v in run.failures.items()),
    ]
    for role, usage in run.total.items():
        cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd else ""
        lines.append(
            f"- {role.capitalize()} tokens: {usage.prompt_tokens:,} prompt + "
            f"{usage.completion_tokens:,} completion{cost}"
        )
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report, chart, summary
