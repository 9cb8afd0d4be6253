"""What a judgment means for the optimized prompt: the seeded position of its answer, the outcome
of one judgment, and the outcome of each judged pair."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


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
