"""Win-rate arithmetic on hand-checked outcomes, the bootstrap interval, and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.report import (
    bootstrap_delta_wr,
    markdown_table,
    plot_delta_wr_rounds,
    plot_win_tie_lose,
    win_rate,
    write_report,
)
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_delta_wr_on_a_hand_checked_set() -> None:
    # 6 wins, 2 ties, 1 loss, 1 unparsable verdict: n = 10.
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["lose"] + ["invalid"]
    stats = win_rate(outcomes, bootstrap_samples=500)
    assert (stats.n, stats.win, stats.tie, stats.lose, stats.invalid) == (10, 6, 2, 1, 1)
    assert stats.win_rate == pytest.approx(0.6)
    assert stats.tie_rate == pytest.approx(0.2)
    assert stats.lose_rate == pytest.approx(0.1)
    assert stats.invalid_rate == pytest.approx(0.1)
    assert stats.delta_wr == pytest.approx(0.5)
    assert stats.win_rate + stats.tie_rate + stats.lose_rate + stats.invalid_rate == pytest.approx(
        1
    )


def test_inconsistent_pairs_count_as_ties() -> None:
    stats = win_rate(["win", "inconsistent", "lose", "lose"], bootstrap_samples=200)
    assert stats.inconsistent == 1
    assert stats.tie_rate == pytest.approx(0.25)
    assert stats.delta_wr == pytest.approx(-0.25)


def test_unknown_outcome_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown outcomes \\['won'\\]"):
        win_rate(["won"])


def test_empty_set_gives_nan_not_an_error() -> None:
    stats = win_rate([])
    assert stats.n == 0 and math.isnan(stats.delta_wr) and math.isnan(stats.ci_low)


def test_bootstrap_interval_matches_the_standard_error() -> None:
    # ±1 scores with equal odds: sd 1, so the 95% interval of the mean is about ±1.96/sqrt(400).
    outcomes = ["win", "lose"] * 200
    low, high = bootstrap_delta_wr(outcomes, samples=4000, confidence=0.95, seed=1)
    assert low < 0 < high
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.12)
    assert (low, high) == bootstrap_delta_wr(outcomes, samples=4000, confidence=0.95, seed=1)
    narrow = bootstrap_delta_wr(outcomes, samples=4000, confidence=0.5, seed=1)
    assert narrow[1] - narrow[0] < (high - low) / 2


def test_bootstrap_of_a_unanimous_set_is_a_point() -> None:
    assert bootstrap_delta_wr(["win"] * 30, samples=300) == (1.0, 1.0)
    stats = win_rate(["win"] * 8 + ["lose"] * 2, bootstrap_samples=2000, seed=3)
    assert stats.ci_low <= stats.delta_wr <= stats.ci_high
    assert stats.ci_low < stats.ci_high


def test_markdown_table_rows() -> None:
    stats = {("dolly",): win_rate(["win", "win", "tie", "lose"], bootstrap_samples=100)}
    table = markdown_table(stats, ["Test set"]).splitlines()
    assert table[0] == ("| Test set | n | Win % | Tie % | Lose % | ΔWR | 95% CI | Invalid % |")
    assert table[2].startswith("| dolly | 4 | 50.0 | 25.0 | 25.0 | +25.0 | [")
    assert table[2].endswith("| 0.0 |")


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 100


def test_charts_are_real_pngs(tmp_path: Path) -> None:
    stats = {
        "vicuna": win_rate(["win"] * 5 + ["tie"] * 3 + ["lose"] * 2, bootstrap_samples=100),
        "dolly": win_rate(["win"] * 2 + ["lose"] * 2 + ["invalid"], bootstrap_samples=100),
    }
    bars = plot_win_tie_lose(stats, tmp_path / "bars.png", title="test")
    rounds = plot_delta_wr_rounds(
        {"vicuna": {1: stats["vicuna"], 2: stats["dolly"]}}, tmp_path / "rounds.png"
    )
    _assert_png(bars)
    _assert_png(rounds)


def test_write_report_per_testset_category_and_round(tmp_path: Path) -> None:
    config = EvalConfig(output_dir=str(tmp_path), optimizer="none", rounds=2, bootstrap_samples=200)
    rows = []
    for i in range(10):
        rows.append(
            {
                "testset": "vicuna",
                "id": str(i),
                "round": 1,
                "category": "math",
                "outcome": "win" if i < 7 else "lose",
            }
        )
        rows.append(
            {
                "testset": "vicuna",
                "id": str(i),
                "round": 2,
                "category": "math",
                "outcome": "win" if i < 4 else "tie",
            }
        )
    for i in range(4):
        rows.append(
            {
                "testset": "dolly",
                "id": str(i),
                "round": 2,
                "category": "open_qa",
                "outcome": "invalid" if i == 0 else "lose",
            }
        )
    judgments = [
        {
            "testset": "dolly",
            "id": "0",
            "round": 2,
            "outcome": "invalid",
            "parse_error": "no [[A]], [[B]] or [[C]] verdict",
            "judgment": "I like A",
        }
    ]
    run_info = {
        "prompts": 14,
        "pairs_expected": 28,
        "pairs_judged": 24,
        "pairs_missing": 4,
        "pairs_without_answers": 0,
        "optimizer_fallbacks": 0,
        "new_calls": {"optimize": 0, "answer": 0, "judge": 0},
        "failed_calls": {"optimize": 0, "answer": 0, "judge": 0},
        "first_errors": {},
        "usage_this_run": {},
        "usage_total": {
            "answer": {"prompt_tokens": 10, "completion_tokens": 20, "cost_usd": 0.0},
            "judge": {"prompt_tokens": 30, "completion_tokens": 40, "cost_usd": 0.5},
        },
    }
    report, charts, summary = write_report(config, rows, judgments, run_info)

    by_key = {(r["testset"], r["round"]): r for r in summary["results"]}
    assert by_key[("vicuna", 1)]["delta_wr"] == pytest.approx(0.4)  # 7 wins, 3 losses
    assert by_key[("vicuna", 2)]["delta_wr"] == pytest.approx(0.4)  # 4 wins, 6 ties
    assert by_key[("dolly", 2)]["delta_wr"] == pytest.approx(-0.75)
    assert by_key[("dolly", 2)]["invalid_rate"] == pytest.approx(0.25)
    assert by_key[("All", 2)]["n"] == 14
    assert by_key[("All", 2)]["delta_wr"] == pytest.approx((4 - 3) / 14)
    assert [c["category"] for c in summary["categories"]] == ["math", "open_qa"]
    assert summary["invalid_verdicts"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["results"] == json.loads(
        json.dumps(summary["results"])
    )

    text = report.read_text()
    assert "| vicuna | 10 | 40.0 | 60.0 | 0.0 | +40.0 |" in text
    assert "| vicuna | +40.0 | +40.0 |" in text  # ΔWR per round
    assert "| dolly | open_qa | 4 | 0.0 | 0.0 | 75.0 | -75.0 |" in text
    assert "4 missing: re-run to complete them" in text
    assert "Invalid verdict dolly/0 round 2: no [[A]], [[B]] or [[C]] verdict" in text
    assert "$0.5000" in text
    assert [c.name for c in charts] == ["winrates.png", "rounds.png"]
    for chart in charts:
        _assert_png(chart)
        assert f"]({chart.name})" in text
