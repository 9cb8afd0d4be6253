from pathlib import Path

import pytest

from bpo_integrations.jsonl import JsonlError, JsonlWriter, finished_keys, read_jsonl


def test_writer_appends_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"id": 1})
    with JsonlWriter(path) as writer:
        writer.write({"id": 2})
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]
    assert finished_keys(path, "id") == {1, 2}
    assert finished_keys(tmp_path / "missing.jsonl", "id") == set()


def test_a_line_cut_off_by_a_crash_is_dropped_and_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "te', encoding="utf-8")
    assert finished_keys(path, "id") == {1}
    with pytest.raises(JsonlError, match=r"out.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    with JsonlWriter(path) as writer:
        writer.write({"id": 2})
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]


def test_bad_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"bad.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(JsonlError, match=r"bad.jsonl:2: not valid UTF-8"):
        list(read_jsonl(path))
