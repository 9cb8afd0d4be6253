"""A file of prompts optimized elsewhere (``optimizer: file``), matched to the test prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bpo_integrations.template import join_context
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.testsets import EvalPrompt
from bpo_trainer.records import read_records


def load_optimized_file(config: EvalConfig, items: Sequence[EvalPrompt]) -> dict[str, list[str]]:
    """The first ``config.rounds`` optimized prompts of each of ``items`` (by
    :attr:`EvalPrompt.key`), read from ``config.optimized_file``: a record names its prompt by
    ``id`` (and ``testset``) or by the original ``prompt``, and gives ``optimized_prompt``,
    ``optimized`` or a ``rounds`` list."""
    path = Path(config.optimized_file or "")
    by_id, by_prompt = _read_rewrites(path)
    found: dict[str, list[str]] = {}
    missing = []
    for item in items:
        rounds = (
            by_id.get((item.testset, item.id))
            or by_id.get((None, item.id))
            or by_prompt.get(item.prompt)
        )
        if rounds is None:
            missing.append(f"{item.testset}/{item.id}")
            continue
        if len(rounds) < config.rounds:
            raise TrainerConfigError(
                f"{path}: {item.testset}/{item.id} has {len(rounds)} optimized round(s) but "
                f"rounds={config.rounds}; lower rounds or add the 'rounds' list"
            )
        found[item.key] = rounds[: config.rounds]
    if missing:
        raise TrainerConfigError(
            f"{path} has no optimized prompt for {len(missing)} test prompt(s), e.g. {missing[0]}: "
            "match them by 'id' (+ 'testset') or by the original 'prompt'"
        )
    return found


def _read_rewrites(
    path: Path,
) -> tuple[dict[tuple[str | None, str], list[str]], dict[str, list[str]]]:
    """The rounds of each record of ``path``, by ``(testset, id)`` and by original prompt."""
    try:
        records = read_records(path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainerConfigError(f"optimized_file: {error}") from error
    by_id: dict[tuple[str | None, str], list[str]] = {}
    by_prompt: dict[str, list[str]] = {}
    for number, record in enumerate(records, start=1):
        rounds = record.get("rounds")
        if rounds is None:
            text = record.get("optimized_prompt", record.get("optimized"))
            rounds = [text] if text is not None else None
        if not rounds or not all(isinstance(r, str) and r.strip() for r in rounds):
            raise TrainerConfigError(
                f"{path} record {number}: no optimized prompt; give 'optimized_prompt', "
                "'optimized' or 'rounds' (a list of non-empty strings)"
            )
        raw_id = next((record[f] for f in ("id", "idx", "question_id") if f in record), None)
        if raw_id is not None:
            by_id[(record.get("testset"), str(raw_id))] = list(rounds)
        original = record.get("prompt", record.get("text"))
        if original is None and "instruction" in record:
            original = join_context(record["instruction"], record.get("context")).strip()
        if isinstance(original, str):
            by_prompt[original.strip()] = list(rounds)
    return by_id, by_prompt
