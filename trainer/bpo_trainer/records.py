"""The feedback record every data stage passes on, and the file helpers the stages share.

One record is one single-turn instruction with a preferred (``good_res``) and a dispreferred
(``bad_res``) response, in the field names of the released BPO data (``thu-coai/BPO``
``data/train_data``). ``context`` is ``None`` for sources without a context field; only then is the
key left out of the JSON, because the construction prompt and the processing switch on its presence.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bpo_integrations.jsonl import read_jsonl


@dataclass(frozen=True)
class FeedbackRecord:
    """A single-turn instruction with a preferred and a dispreferred response.

    Example:
        >>> record = FeedbackRecord.create(
        ...     source="hh-rlhf", instruction="What is rabies?", good_res="A viral disease.",
        ...     bad_res="A dog.",
        ... )
        >>> record.id, sorted(record.to_dict())
        ('hh-rlhf-5c0e5a4f7cb9', ['bad_res', 'good_res', 'id', 'instruction', 'source'])
    """

    id: str
    source: str
    instruction: str
    good_res: str
    bad_res: str
    context: str | None = None
    good_model: str | None = None
    bad_model: str | None = None

    @classmethod
    def create(
        cls,
        *,
        source: str,
        instruction: str,
        good_res: str,
        bad_res: str,
        context: str | None = None,
        good_model: str | None = None,
        bad_model: str | None = None,
    ) -> FeedbackRecord:
        """A record whose ``id`` is derived from its content (see :func:`record_id`)."""
        return cls(
            id=record_id(source, instruction, context, good_res, bad_res),
            source=source,
            instruction=instruction,
            good_res=good_res,
            bad_res=bad_res,
            context=context,
            good_model=good_model,
            bad_model=bad_model,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form without ``None`` fields (``context`` only where a source has one)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def record_id(
    source: str, instruction: str, context: str | None, good_res: str, bad_res: str
) -> str:
    """A stable id from the content: the same pair gets the same id on every run and machine."""
    digest = hashlib.sha256(
        "\x1f".join([instruction, context or "", good_res, bad_res]).encode("utf-8")
    ).hexdigest()
    return f"{source}-{digest[:12]}"


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` file (one object a line) or a ``.json`` file (a list of objects).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the file the previous stage wrote")
    if path.suffix == ".jsonl":
        return list(read_jsonl(path, allow_truncated_tail=True))
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ValueError(f"{path}: expected a JSON list of objects (or use a .jsonl file)")
        return data
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .json or .jsonl")


def write_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` atomically (a temporary file renamed over ``path``): JSONL, or a JSON list
    when ``path`` ends in ``.json``. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        if path.suffix == ".json":
            json.dump(list(records), handle, ensure_ascii=False, indent=2)
        else:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write one JSON document (a report or statistics), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
