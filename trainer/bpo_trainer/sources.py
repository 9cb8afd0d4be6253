"""Where a stage's input records come from: a local JSON / JSONL file or a Hub data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.records import read_records


def load_records(source: str, *, split: str = "train") -> list[dict[str, Any]]:
    """The records of ``source``: a ``.jsonl`` / ``.json`` file, or a Hub data set id.

    Anything that is not an existing file and does not look like a path is loaded with
    ``datasets.load_dataset(source, split=split)``.

    Example:
        >>> import json, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.json"
        >>> _ = path.write_text(json.dumps([{"final_input": "a", "final_output": "b"}]))
        >>> load_records(str(path))
        [{'final_input': 'a', 'final_output': 'b'}]
    """
    path = Path(source).expanduser()
    if path.is_dir():
        raise TrainerConfigError(f"{source} is a folder: pass a .json or .jsonl file in it")
    if path.is_file():
        try:
            return read_records(path)
        except ValueError as error:
            raise TrainerConfigError(str(error)) from error
    if source.endswith((".json", ".jsonl")) or source.startswith((".", "/", "~")):
        raise TrainerConfigError(f"data file not found: {source}; check the path")
    return _load_hub(source, split)


def _load_hub(source: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as error:
        raise TrainerConfigError(
            f"could not load the data set {source!r} (split {split!r}) from the Hub: "
            f"{type(error).__name__}: {error}. Pass a local .json/.jsonl file instead, or go "
            "online (unset HF_HUB_OFFLINE)"
        ) from error
    return [dict(row) for row in dataset]
