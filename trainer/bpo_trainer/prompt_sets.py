"""The BPO prompt sets in ``../shared/data/bpo``, read as the middleware sees them.

``val.json`` (with ChatGPT's rewrites and the training targets) and the Dolly, Self-Instruct and
Vicuna test prompts; :func:`dev_indices` is the default model's dev split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PromptSet = Literal["val", "dolly", "self_instruct", "vicuna"]

SET_FILES: dict[str, str] = {
    "val": "val.json",
    "dolly": "dolly_eval.json",
    "self_instruct": "self_instruct_eval.json",
    "vicuna": "vicuna_eval.jsonl",
}
"""The file of each prompt set inside ``data/bpo``."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a BPO file, split as the middleware sees it.

    ``instruction`` is what the optimizer rewrites; ``context`` is passed on verbatim after it.
    ``reference`` (``val.json`` only) is ChatGPT's rewrite of the instruction
    (``optimized_prompt``) and ``reference_output`` the training target (``final_output``: the
    rewrite with the context after it).
    """

    set: str
    index: int
    instruction: str
    context: str = ""
    reference: str = ""
    reference_output: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.set, self.index)


def _read(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def load_prompts(shared_dir: Path, name: str) -> list[PromptRecord]:
    """Every prompt of one set (``val``, ``dolly``, ``self_instruct`` or ``vicuna``)."""
    if name not in SET_FILES:
        raise ValueError(f"unknown prompt set {name!r}: choose one of {', '.join(SET_FILES)}")
    rows = _read(shared_dir / "data" / "bpo" / SET_FILES[name])
    records = []
    for index, row in enumerate(rows):
        context = (row.get("context") or "").strip()
        if name == "val":
            final_input = (row.get("final_input") or "").strip()
            instruction = (
                (row.get("instruction") or final_input).strip() if context else final_input
            )
            records.append(
                PromptRecord(
                    name,
                    index,
                    instruction,
                    context,
                    reference=(row.get("optimized_prompt") or "").strip(),
                    reference_output=(row.get("final_output") or "").strip(),
                )
            )
        else:
            instruction = (row.get("text") or row.get("instruction") or "").strip()
            records.append(PromptRecord(name, index, instruction, context))
    return records


def dev_indices() -> list[int]:
    """The default model's dev split: the ``val.json`` indices its training record lists."""
    from bpo_integrations.models import default_adapter_path

    record = json.loads((default_adapter_path() / "bpo_training.json").read_text("utf-8"))
    return list(record["dev_indices"])


def load_records(shared: Path) -> dict[tuple[str, int], PromptRecord]:
    """Every prompt of every set, by (set, index)."""
    return {r.key: r for name in SET_FILES for r in load_prompts(shared, name)}
