"""The README's examples marked ``<!-- test: run -->`` run as written and print what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- test: run -->\n```python\n(.*?)```", re.DOTALL)


def runnable_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def expected_output(code: str) -> list[str]:
    """The ``# ...`` comment lines that directly follow a ``print(...)`` line."""
    lines = code.splitlines()
    expected = []
    for previous, line in pairwise(lines):
        if previous.startswith("print(") and line.startswith("# "):
            expected.append(line[2:])
    return expected


def test_readme_has_runnable_examples() -> None:
    assert len(runnable_blocks()) >= 3


@pytest.mark.parametrize("code", runnable_blocks(), ids=lambda code: code.splitlines()[0][:40])
def test_readme_example_runs_and_prints_what_it_says(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    for line in expected_output(code):
        assert line in printed, f"README says {line!r}, the example printed {printed!r}"
