"""The search's inputs: seed queries and base in-context examples, from JSONL or JSON files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bpo_integrations.template import join_context
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.records import read_records

QUERY_FIELDS = ("query", "prompt", "instruction", "text")
RESPONSE_FIELDS = ("response", "output", "answer", "good_res")


def _read(path: str | Path, what: str) -> list[dict[str, Any]]:
    try:
        return read_records(path)
    except FileNotFoundError as error:
        raise TrainerConfigError(f"{what}: {error}") from error
    except ValueError as error:
        raise TrainerConfigError(f"{what}: {error}") from error


def _query(record: dict[str, Any], where: str) -> str:
    for name in QUERY_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise TrainerConfigError(f"{where}: {name!r} must be a non-empty string")
        context = record.get("context") if name == "instruction" else None
        if context is not None and not isinstance(context, str):
            raise TrainerConfigError(f"{where}: 'context' must be a string")
        return join_context(value, context).strip()
    raise TrainerConfigError(
        f"{where} has no query: give one of {', '.join(QUERY_FIELDS)} (fields: {sorted(record)})"
    )


def load_queries(path: str | Path, *, sample: int | None = None, seed: int = 42) -> list[str]:
    """The seed queries of ``path``: duplicates dropped, then a seeded shuffle (the reference
    shuffles its seed set with seed 42), cut to ``sample`` when given."""
    records = _read(path, "queries_file")
    queries = list(
        dict.fromkeys(_query(r, f"{path} record {i}") for i, r in enumerate(records, start=1))
    )
    if not queries:
        raise TrainerConfigError(f"queries_file {path} holds no queries")
    random.Random(seed).shuffle(queries)
    return queries[:sample] if sample is not None else queries


def load_examples(path: str | Path, *, limit: int | None = None) -> list[tuple[str, str]]:
    """The base ``(query, response)`` examples of ``path``, in file order (the first ``limit``)."""
    records = _read(path, "examples_file")
    examples = []
    for number, record in enumerate(records, start=1):
        where = f"{path} record {number}"
        query = _query(record, where)
        response = next((record[f] for f in RESPONSE_FIELDS if record.get(f) is not None), None)
        if not isinstance(response, str) or not response.strip():
            raise TrainerConfigError(
                f"{where} has no response: give one of {', '.join(RESPONSE_FIELDS)} as a "
                "non-empty string"
            )
        examples.append((query, response.strip()))
    if not examples:
        raise TrainerConfigError(f"examples_file {path} holds no examples")
    return examples[:limit] if limit is not None else examples
