"""The paper's test sets (Vicuna Eval, Dolly Eval, Self-Instruct Eval) and any file of prompts."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpo_integrations.template import join_context
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.records import read_records


@dataclass(frozen=True)
class EvalPrompt:
    """One test prompt. ``prompt`` is what the answering model and the judge are asked:
    ``instruction`` + newline + ``context`` where the context is not empty, as the reference's
    ``(instruction + '\\n' + context).strip()``."""

    testset: str
    id: str
    prompt: str
    instruction: str
    context: str | None = None
    category: str | None = None

    @property
    def key(self) -> str:
        """The prompt's key across the steps of a run: its test set and id."""
        return f"{self.testset}\x1f{self.id}"


@dataclass(frozen=True)
class _Builtin:
    filename: str
    id_field: str


BUILTINS: Mapping[str, _Builtin] = {
    "vicuna": _Builtin("vicuna_eval.jsonl", "question_id"),
    "dolly": _Builtin("dolly_eval.json", "idx"),
    "self_instruct": _Builtin("self_instruct_eval.json", "id"),
}
"""The paper's test sets: file name in the data folder and the id field the reference keys on."""

_ID_FIELDS = ("id", "idx", "question_id")


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """Where the built-in test sets are read from: ``data_dir``, else ``$BPO_SHARED_DIR/data/bpo``,
    else ``../shared/data/bpo`` beside the working directory."""
    if data_dir:
        return Path(data_dir)
    shared = os.environ.get("BPO_SHARED_DIR")
    if shared:
        return Path(shared) / "data" / "bpo"
    return Path.cwd().parent / "shared" / "data" / "bpo"


def load_testset(name_or_path: str, *, data_dir: str | Path | None = None) -> list[EvalPrompt]:
    """Load a built-in test set by name (``vicuna``, ``dolly``, ``self_instruct``) from
    ``data_dir``, or a ``.jsonl``/``.json`` file of prompts.

    A file's records need ``prompt``, ``text`` or ``instruction`` (with an optional ``context``);
    ``id``/``idx``/``question_id`` and ``category`` are optional (the record's index is the id).

    Example:
        >>> import json, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.jsonl"
        >>> _ = path.write_text(json.dumps({"instruction": "Sum up", "context": "A text."}))
        >>> load_testset(str(path))[0].prompt
        'Sum up\\nA text.'
    """
    if name_or_path in BUILTINS:
        spec = BUILTINS[name_or_path]
        if data_dir is None:
            raise TrainerConfigError(f"test set {name_or_path!r} needs data_dir")
        path = Path(data_dir) / spec.filename
        if not path.is_file():
            raise TrainerConfigError(
                f"test set {name_or_path!r}: {path} not found; set data_dir (--data-dir) or "
                "BPO_SHARED_DIR to the folder holding the BPO test sets"
            )
        return _from_records(name_or_path, path, read_records(path), spec.id_field)
    path = Path(name_or_path)
    if not path.is_file():
        builtins = ", ".join(repr(name) for name in BUILTINS)
        raise TrainerConfigError(
            f"test set {name_or_path!r} is neither a built-in ({builtins}) nor an existing "
            ".jsonl/.json file"
        )
    try:
        records = read_records(path)
    except ValueError as error:
        raise TrainerConfigError(str(error)) from error
    return _from_records(path.stem, path, records, None)


def sample_prompts(prompts: Sequence[EvalPrompt], size: int | None, seed: int) -> list[EvalPrompt]:
    """A seeded random sample of ``size`` prompts, in the test set's order (all when ``None``)."""
    if size is None or size >= len(prompts):
        return list(prompts)
    name = prompts[0].testset if prompts else ""
    chosen = sorted(random.Random(f"{seed}:{name}").sample(range(len(prompts)), size))
    return [prompts[i] for i in chosen]


def _from_records(
    name: str, path: Path, records: list[dict[str, Any]], id_field: str | None
) -> list[EvalPrompt]:
    prompts: list[EvalPrompt] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        where = f"{path} record {index + 1}"
        if "prompt" in record or "text" in record:
            instruction = record.get("prompt", record.get("text"))
            context = None
        elif "instruction" in record:
            instruction = record["instruction"]
            context = record.get("context") or None
        else:
            raise TrainerConfigError(
                f"{where} has no 'prompt', 'text' or 'instruction' field (fields: {sorted(record)})"
            )
        if not isinstance(instruction, str) or not instruction.strip():
            raise TrainerConfigError(f"{where}: the prompt is empty or not a string")
        if context is not None and not isinstance(context, str):
            raise TrainerConfigError(f"{where}: 'context' must be a string")
        fields = (id_field,) if id_field else _ID_FIELDS
        raw_id = next((record[f] for f in fields if record.get(f) is not None), index)
        item_id = str(raw_id)
        if item_id in seen:
            raise TrainerConfigError(f"{where}: duplicate id {item_id!r}; ids must be unique")
        seen.add(item_id)
        category = record.get("category")
        prompts.append(
            EvalPrompt(
                testset=name,
                id=item_id,
                prompt=join_context(instruction, context).strip(),
                instruction=instruction,
                context=context,
                category=str(category) if category is not None else None,
            )
        )
    if not prompts:
        raise TrainerConfigError(f"{path} holds no prompts")
    return prompts
