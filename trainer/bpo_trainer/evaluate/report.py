"""Win / tie / lose rates, the paper's delta WR with a bootstrap interval, the markdown report and
the PNG charts (matplotlib, Agg backend: no display needed).

Rates are over every judged pair, as the reference's ``cal_gpt4_score.py`` divides by all
judgments: a verdict that cannot be parsed counts in the denominator and in its own ``invalid``
column, so win + tie + lose + invalid = 100%. With both orders judged, a pair whose two verdicts
disagree is ``inconsistent`` and counts as a tie.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpo_trainer.evaluate.config import EvalConfig

OUTCOMES = ("win", "tie", "lose", "invalid", "inconsistent")
ALL = "All"


@dataclass(frozen=True)
class WinRate:
    """Counts and rates of the optimized prompt's answer against the original's.

    Example:
        >>> stats = win_rate(["win", "win", "tie", "lose"], bootstrap_samples=200)
        >>> stats.win_rate, stats.lose_rate, stats.delta_wr
        (0.5, 0.25, 0.25)
    """

    n: int
    win: int
    tie: int
    lose: int
    invalid: int
    inconsistent: int
    ci_low: float
    ci_high: float
    confidence: float

    def _rate(self, count: int) -> float:
        return count / self.n if self.n else math.nan

    @property
    def win_rate(self) -> float:
        return self._rate(self.win)

    @property
    def tie_rate(self) -> float:
        """Ties, including the ``inconsistent`` pairs of a both-orders run."""
        return self._rate(self.tie + self.inconsistent)

    @property
    def lose_rate(self) -> float:
        return self._rate(self.lose)

    @property
    def invalid_rate(self) -> float:
        return self._rate(self.invalid)

    @property
    def delta_wr(self) -> float:
        """The paper's ΔWR: win rate minus lose rate."""
        return self._rate(self.win - self.lose)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("win_rate", "tie_rate", "lose_rate", "invalid_rate", "delta_wr"):
            data[name] = getattr(self, name)
        return data


def win_rate(
    outcomes: Iterable[str],
    *,
    bootstrap_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Count ``outcomes`` (``win``/``tie``/``lose``/``invalid``/``inconsistent``) and bootstrap a
    ``confidence`` interval of ΔWR by resampling the pairs."""
    values = list(outcomes)
    unknown = set(values) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}: expected {OUTCOMES}")
    counts = {name: values.count(name) for name in OUTCOMES}
    low, high = bootstrap_delta_wr(
        values, samples=bootstrap_samples, confidence=confidence, seed=seed
    )
    return WinRate(n=len(values), **counts, ci_low=low, ci_high=high, confidence=confidence)


def bootstrap_delta_wr(
    outcomes: Sequence[str], *, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ΔWR: each pair scores +1 (win), -1 (lose) or 0."""
    import numpy as np

    if not outcomes:
        return math.nan, math.nan
    scores = np.array([1 if o == "win" else -1 if o == "lose" else 0 for o in outcomes], float)
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(samples, len(scores)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def group_stats(
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    *,
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> dict[tuple[Any, ...], WinRate]:
    """:func:`win_rate` of the pairs grouped by ``keys`` (row fields), in first-seen order."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row["outcome"])
    return {
        group: win_rate(
            outcomes, bootstrap_samples=bootstrap_samples, confidence=confidence, seed=seed
        )
        for group, outcomes in groups.items()
    }


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.1f}"


def markdown_table(
    stats: dict[tuple[Any, ...], WinRate], labels: Sequence[str], *, inconsistent: bool = False
) -> str:
    """A markdown table of ``stats``, one row per group; ``labels`` name the group columns."""
    level = next(iter(stats.values())).confidence if stats else 0.95
    header = [*labels, "n", "Win %", "Tie %", "Lose %", "ΔWR", f"{level:.0%} CI", "Invalid %"]
    if inconsistent:
        header.append("Inconsistent")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, s in stats.items():
        cells = [str(g) if g is not None else "-" for g in group]
        cells += [
            str(s.n),
            _pct(s.win_rate),
            _pct(s.tie_rate),
            _pct(s.lose_rate),
            _signed(s.delta_wr),
            f"[{_signed(s.ci_low)}, {_signed(s.ci_high)}]",
            _pct(s.invalid_rate),
        ]
        if inconsistent:
            cells.append(str(s.inconsistent))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_win_tie_lose(stats: dict[str, WinRate], path: str | Path, *, title: str = "") -> Path:
    """Stacked horizontal bars of win / tie / lose (/ invalid) per test set, like Table 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    parts = [
        ("Win", "win_rate", "#2e7d32"),
        ("Tie", "tie_rate", "#9e9e9e"),
        ("Lose", "lose_rate", "#c62828"),
        ("Invalid", "invalid_rate", "#ffcc80"),
    ]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for label, attr, color in parts:
        widths = [_zero(getattr(stats[n], attr)) * 100 for n in names]
        bars = ax.barh(names, widths, left=left, color=color, label=label)
        for bar, width in zip(bars, widths, strict=True):
            if width >= 6:
                ax.text(
                    bar.get_x() + width / 2,
                    bar.get_y() + bar.get_height() / 2,
                    f"{width:.0f}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=8,
                )
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of pairs (optimized vs original prompt)")
    ax.invert_yaxis()
    ax.legend(ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    if title:
        ax.set_title(title, pad=28)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_delta_wr_rounds(
    stats: dict[str, dict[int, WinRate]], path: str | Path, *, title: str = ""
) -> Path:
    """ΔWR per optimization round with its bootstrap interval, one line per test set (Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (name, by_round) in enumerate(stats.items()):
        rounds = sorted(by_round)
        shift = (index - (len(stats) - 1) / 2) * 0.05  # keep the error bars apart
        mids = [_zero(by_round[r].delta_wr) * 100 for r in rounds]
        lows = [m - _zero(by_round[r].ci_low) * 100 for m, r in zip(mids, rounds, strict=True)]
        highs = [_zero(by_round[r].ci_high) * 100 - m for m, r in zip(mids, rounds, strict=True)]
        xs = [r + shift for r in rounds]
        ax.errorbar(xs, mids, yerr=[lows, highs], marker="o", capsize=3, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("optimization round")
    ax.set_ylabel("ΔWR (win % − lose %)")
    all_rounds = sorted({r for by_round in stats.values() for r in by_round})
    ax.set_xticks(all_rounds or [1])
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def write_report(
    config: EvalConfig,
    rows: Sequence[dict[str, Any]],
    judgments: Sequence[dict[str, Any]],
    run_info: dict[str, Any],
) -> tuple[Path, list[Path], dict[str, Any]]:
    """Write ``report.md``, ``summary.json``, ``winrates.png`` and ``rounds.png``."""
    out = Path(config.output_dir)
    options = {
        "bootstrap_samples": config.bootstrap_samples,
        "confidence": config.confidence,
        "seed": config.seed,
    }
    all_rows = [{**row, "testset": ALL} for row in rows]
    testsets = list(dict.fromkeys(row["testset"] for row in rows))
    multi = len(testsets) > 1
    by_round = group_stats([*rows, *(all_rows if multi else [])], ["testset", "round"], **options)
    last = config.rounds
    final = {
        name: by_round[(name, last)]
        for name in [*testsets, *([ALL] if multi else [])]
        if (name, last) in by_round
    }
    categories = group_stats(
        sorted(
            (r for r in rows if r["round"] == last and r.get("category") is not None),
            key=lambda r: (testsets.index(r["testset"]), str(r["category"])),
        ),
        ["testset", "category"],
        **options,
    )
    round_table: dict[str, dict[int, WinRate]] = {}
    for (name, round_index), stats in by_round.items():
        round_table.setdefault(name, {})[round_index] = stats

    charts = []
    if final:
        charts.append(
            plot_win_tie_lose(final, out / "winrates.png", title=_chart_title(config, last))
        )
    if round_table:
        charts.append(plot_delta_wr_rounds(round_table, out / "rounds.png"))

    invalid = [j for j in judgments if j.get("outcome") == "invalid"]
    summary = {
        "config": asdict(config),
        "results": [
            {"testset": name, "round": r, **stats.to_dict()}
            for (name, r), stats in by_round.items()
        ],
        "categories": [
            {"testset": name, "category": category, "round": last, **stats.to_dict()}
            for (name, category), stats in categories.items()
        ],
        "invalid_verdicts": len(invalid),
        "invalid_examples": [
            {
                "testset": j["testset"],
                "id": j["id"],
                "round": j["round"],
                "parse_error": j.get("parse_error"),
                "judgment": (j.get("judgment") or "")[:300],
            }
            for j in invalid[:5]
        ],
        "run": run_info,
    }
    (out / "summary.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2, default=_json_default) + "\n",
        encoding="utf-8",
    )
    report = out / "report.md"
    report.write_text(
        _markdown(config, final, round_table, categories, summary, charts), encoding="utf-8"
    )
    return report, charts, summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _chart_title(config: EvalConfig, round_index: int) -> str:
    suffix = f", round {round_index}" if config.rounds > 1 else ""
    return f"{config.answer_model}: optimized vs original prompt ({config.judge_model}{suffix})"


def _markdown(
    config: EvalConfig,
    final: dict[str, WinRate],
    round_table: dict[str, dict[int, WinRate]],
    categories: dict[tuple[Any, ...], WinRate],
    summary: dict[str, Any],
    charts: Sequence[Path],
) -> str:
    run = summary["run"]
    order = (
        "both orders (a win or loss counts only when the two verdicts agree)"
        if config.both_orders
        else f"one order, drawn at random per pair (seed {config.seed}) and recorded"
    )
    optimizer = config.optimizer_model or config.optimized_file or config.optimizer_url or ""
    lines = [
        "# BPO evaluation: optimized vs original prompt",
        "",
        f"- Optimizer: {config.optimizer} {optimizer}".rstrip()
        + (f", {config.rounds} rounds" if config.rounds > 1 else ""),
        f"- Answering model: {config.answer_model} ({config.answer_backend}; temperature "
        f"{config.answer_temperature}, top_p {config.answer_top_p}, max {config.answer_max_tokens}"
        " tokens)",
        f"- Judge: {config.judge_model} ({config.judge_backend}) with the `{config.judge_prompt}` "
        f"prompt; {order}",
        f"- Pairs judged: {run['pairs_judged']} of {run['pairs_expected']}"
        + (
            f" ({run['pairs_missing']} missing: re-run to complete them)"
            if run["pairs_missing"]
            else ""
        ),
        "",
        f"## Win rates{f' (round {config.rounds})' if config.rounds > 1 else ''}",
        "",
        "ΔWR = win % − lose %. Rates are over all judged pairs; unparsable verdicts are counted "
        "as Invalid.",
        "",
        markdown_table(
            {(name,): stats for name, stats in final.items()},
            ["Test set"],
            inconsistent=config.both_orders,
        ),
    ]
    if config.rounds > 1:
        rounds = sorted({r for by_round in round_table.values() for r in by_round})
        lines += [
            "",
            "## ΔWR per optimization round",
            "",
            "| Test set | " + " | ".join(f"Round {r}" for r in rounds) + " |",
            "|" + "---|" * (len(rounds) + 1),
        ]
        for name, by_round in round_table.items():
            cells = [_signed(by_round[r].delta_wr) if r in by_round else "-" for r in rounds]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if categories:
        lines += [
            "",
            f"## Per category{f' (round {config.rounds})' if config.rounds > 1 else ''}",
            "",
            markdown_table(categories, ["Test set", "Category"], inconsistent=config.both_orders),
        ]
    if charts:
        lines += ["", "## Charts", ""]
        lines += [f"![{chart.stem}]({chart.name})" for chart in charts]
    lines += [
        "",
        "## Run",
        "",
        f"- Prompts: {run['prompts']}; optimizer fallbacks (original prompt kept): "
        f"{run['optimizer_fallbacks']}",
        f"- Invalid verdicts: {summary['invalid_verdicts']}",
        f"- New calls this run: {_counts(run['new_calls'])}; failed after retries: "
        f"{_counts(run['failed_calls'])}",
    ]
    for role, usage in run["usage_total"].items():
        cost = f", ${usage['cost_usd']:.4f}" if usage["cost_usd"] else ""
        lines.append(
            f"- {role.capitalize()} tokens (whole evaluation): {usage['prompt_tokens']:,} prompt + "
            f"{usage['completion_tokens']:,} completion{cost}"
        )
    for step, message in run["first_errors"].items():
        lines.append(f"- First {step} error: `{message[:200]}`")
    for example in summary["invalid_examples"]:
        lines.append(
            f"- Invalid verdict {example['testset']}/{example['id']} round {example['round']}: "
            f"{example['parse_error']}"
        )
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{step} {count}" for step, count in counts.items())
