"""Append-only JSONL files that survive a crash: the resumable format of every long job.

A job writes one record per finished item and flushes it at once, so a crash loses at most the items
in flight; on restart it reads the keys already written and skips them. A last line cut off by a
crash is ignored (and overwritten by the next append), never fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any


class JsonlError(ValueError):
    """A JSONL file has a line that is not a JSON object; names the file and line."""


def read_jsonl(
    path: str | os.PathLike[str], *, allow_truncated_tail: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of ``path``, one per non-empty line.

    Raises :class:`JsonlError` naming the line for invalid UTF-8, invalid JSON or a non-object;
    with ``allow_truncated_tail`` an unparsable last line (a crash mid-write) is skipped.
    """
    path = Path(path)
    with path.open("rb") as handle:
        lines = handle.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_tail = number == len(lines)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonlError(f"{path}:{number}: not valid UTF-8 ({error.reason})") from error
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            if is_tail and allow_truncated_tail:
                return
            raise JsonlError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise JsonlError(
                f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
            )
        yield record


def finished_keys(path: str | os.PathLike[str], key: str) -> set[Hashable]:
    """The values of ``key`` in the records already in ``path`` (empty if it does not exist)."""
    if not Path(path).exists():
        return set()
    return {record[key] for record in read_jsonl(path, allow_truncated_tail=True) if key in record}


class JsonlWriter:
    """Appends records to a JSONL file, one flushed (and fsynced) line each.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
        >>> with JsonlWriter(out) as writer:
        ...     writer.write({"id": 1, "text": "done"})
        >>> finished_keys(out, "id")
        {1}
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_truncated_tail()
        self._handle = self.path.open("a", encoding="utf-8")

    def _drop_truncated_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            handle.seek(cut)
            handle.truncate()

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
