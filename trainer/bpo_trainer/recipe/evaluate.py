"""The recipe's quality table: (a) copy, (b) the base zero-shot, (c) the trained model raw,
(d)-(g) the trained model through ``BPOOptimizer`` with four decodings (see
:mod:`bpo_trainer.quality` for the scores)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bpo_integrations.settings import GenerationSettings
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.quality import (
    DevRecord,
    SystemScore,
    copy_outputs,
    greedy_settings,
    optimizer_outputs,
    raw_outputs,
    score_system,
    zero_shot_outputs,
)

if TYPE_CHECKING:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.result import OptimizationResult


def local_backend(base: str, adapter: str | Path | None, device: str) -> LocalBackend:
    """The base model (with ``adapter`` merged), in the template its ``bpo_training.json`` names."""
    from bpo_integrations.backends.local import LocalBackend

    return LocalBackend(base, adapter=adapter, device=device.upper(), template="auto")


def optimizer_variants(max_new_tokens: int) -> dict[str, GenerationSettings]:
    """The decodings system (d) and its variants run with, by row name of the quality table.

    (d) is greedy, as the rest of the table. (e) adds the aggressive mode's length rule (at least
    the prompt's token count + 5 new tokens): the model must write past a copy of the prompt.
    (f) is what ``BPOOptimizer()`` and ``bpo optimize`` do by default (``stable`` sampling) and
    (g) what ``--mode aggressive`` does, both seeded so that the rows reproduce.
    """
    greedy = greedy_settings(max_new_tokens)
    stable = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens, seed=0)
    aggressive = GenerationSettings.for_mode("aggressive", max_new_tokens=max_new_tokens, seed=0)
    return {
        "(d) trained + BPOOptimizer, greedy (guards, context kept)": greedy,
        "(e) as (d), at least prompt length + 5 new tokens": replace(
            greedy, min_new_tokens_from_prompt=True
        ),
        f"(f) as (d), default `stable` sampling (t={stable.temperature:g}, "
        f"top_p={stable.top_p:g}, seed {stable.seed})": stable,
        f"(g) as (d), `aggressive` mode (sampling t={aggressive.temperature:g}, length rule of "
        f"(e), seed {aggressive.seed})": aggressive,
    }


def evaluate(
    base: str,
    adapter: Path,
    records: Sequence[DevRecord],
    *,
    max_new_tokens: int,
    device: str = "cpu",
    raw: list[str] | None = None,
    base_label: str = "base",
) -> tuple[list[SystemScore], dict[str, list[str]]]:
    """Score (a) copy, (b) the base zero-shot, (c) the trained model raw, (d)-(g) through the
    optimizer (see :func:`optimizer_variants`).

    ``raw`` reuses already generated raw rewrites for (c) (from
    :func:`~bpo_trainer.recipe.package.compare_precisions`); ``base_label`` names the base in row
    (b). (a)-(e) decode greedily; all with ``max_new_tokens``.
    """
    from bpo_integrations.optimizer import BPOOptimizer

    settings = greedy_settings(max_new_tokens)
    outputs: dict[str, list[str]] = {"(a) copy the prompt": copy_outputs(records)}
    results: dict[str, list[OptimizationResult]] = {}
    base_backend = local_backend(base, None, device)
    try:
        outputs[f"(b) {base_label} zero-shot"] = zero_shot_outputs(base_backend, records, settings)
    finally:
        base_backend.close()
    trained = local_backend(base, adapter, device)
    try:
        if trained.template_kind != "bpo":
            raise TrainerConfigError(
                f"LocalBackend(template='auto') picked {trained.template_kind!r} for {adapter}; "
                "the adapter was trained on the raw BPO template (its bpo_training.json says so)"
            )
        outputs["(c) trained, raw (greedy, no guards)"] = (
            raw if raw is not None else raw_outputs(trained, records, settings)
        )
        for name, variant in optimizer_variants(max_new_tokens).items():
            optimizer = BPOOptimizer(trained, settings=variant, timeout=None, cache_size=0)
            outputs[name], results[name] = optimizer_outputs(optimizer, records)
    finally:
        trained.close()
    scores = [
        score_system(name, records, texts, results=results.get(name))
        for name, texts in outputs.items()
    ]
    return scores, outputs
