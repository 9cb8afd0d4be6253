"""``steps.jsonl``: the finished search steps, so a restart repeats none of them.

A step's key hashes the settings that determine it and its input (the beam it expands); a
re-run finds the record and takes its result without calling any model. Steps of other
settings stay in the file and are simply not matched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpo_integrations.jsonl import JsonlWriter
from bpo_trainer.evaluate.runtime import records_by_key

STEPS_FILE = "steps.jsonl"


class StepLog:
    """Append-only log of finished steps, looked up by key.

    ``reused`` and ``written`` count the steps this run took from the file and added to it.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / STEPS_FILE
        self._records = records_by_key(self.path)
        self._writer: JsonlWriter | None = None
        self.reused = 0
        self.written = 0

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        if record is not None:
            self.reused += 1
        return record

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        if "key" not in record:
            raise ValueError("a step record needs its 'key'")
        if self._writer is None:
            self._writer = JsonlWriter(self.path, fsync=False)
        self._writer.write(record)
        self._records[record["key"]] = record
        self.written += 1
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
