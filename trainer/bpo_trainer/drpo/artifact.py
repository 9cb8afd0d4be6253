"""Writing the search's result as the ``drpo-alignment/1`` artifact the middleware loads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bpo_integrations.drpo import FORMAT, write_artifact
from bpo_trainer.drpo.config import DRPOConfig
from bpo_trainer.drpo.search import OptimizedExample, PromptSearchResult

ARTIFACT_FILE = "alignment.json"


def malformed_counts(
    examples: Sequence[OptimizedExample], prompt: PromptSearchResult | None
) -> dict[str, int]:
    """What the judge and the optimizer answered that could not be read, over the whole search
    (from the step records, so a resumed run counts the finished steps too)."""
    counts = {
        "aspect_selections": 0,
        "judgments": 0,
        "judge_reasks": 0,
        "judgments_missing_aspects": 0,
        "revisions": 0,
        "proposals": 0,
    }
    states: list[Mapping[str, Any]] = []
    for example in examples:
        root = example.records[0]
        counts["aspect_selections"] += 1 if root["aspects"].get("error") else 0
        for record in example.records:
            counts["revisions"] += record.get("malformed_revisions", 0)
            states += record["candidates"]
    queries_seen: set[str] = set()
    for record in prompt.records if prompt else []:
        counts["proposals"] += record.get("malformed_proposals", 0)
        for node in record["candidates"]:
            states.append(node)
            if node["query"] not in queries_seen:
                queries_seen.add(node["query"])
                counts["aspect_selections"] += 1 if node["aspects"].get("error") else 0
    for state in states:
        evaluation = state["evaluation"]
        counts["judgments"] += 0 if evaluation["scores"] else 1
        counts["judgments_missing_aspects"] += (
            1 if evaluation["scores"] and evaluation["missing"] else 0
        )
        counts["judge_reasks"] += state.get("attempts", 1) - 1
    return counts


def _identity(value: Hashable) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_artifact(
    config: DRPOConfig,
    *,
    examples: Sequence[OptimizedExample],
    prompt: PromptSearchResult,
    models: Mapping[str, Hashable],
    retrieval: str,
    stats: Mapping[str, Any],
) -> dict[str, Any]:
    """The artifact: the system prompt, the optimized examples, the scores per step, the
    settings and the models (their identities: kind, endpoint, name)."""
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "system_prompt": prompt.system_prompt,
        "k": config.k,
        "examples": [example.to_icl_example().to_dict() for example in examples],
        "scores": {
            "icl": [
                {
                    "example": example.index,
                    "query": example.query,
                    "original": example.original_reward,
                    "best": example.reward,
                    "best_per_depth": example.best_per_depth,
                }
                for example in examples
            ],
            "system_prompt": {
                "initial_reward": prompt.initial_reward,
                "best_rewards": prompt.rewards,
                "best_aggregate": prompt.aggregate,
                "steps": [
                    {
                        "step": record["step"],
                        "query": record["query"],
                        "rewards": [n["evaluation"]["reward"] for n in record["candidates"]],
                        "beam_aggregates": [
                            record["candidates"][i]["aggregate"] for i in record["beam"]
                        ],
                    }
                    for record in prompt.records
                ],
            },
        },
        "settings": {**asdict(config), "retrieval": retrieval},
        "models": {role: _identity(identity) for role, identity in models.items()},
        "stats": dict(stats),
    }


def save_artifact(output_dir: Path, data: Mapping[str, Any]) -> Path:
    """Validate and write ``alignment.json`` atomically."""
    return write_artifact(output_dir / ARTIFACT_FILE, data)
