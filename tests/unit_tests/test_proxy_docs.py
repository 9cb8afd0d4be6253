"""The examples of docs/proxy.md and docs/litellm.md marked ``<!-- test: run -->`` run as
written and print what their closing ``# ...`` lines say; the benchmark measures what it says."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"<!-- test: run -->\n```python\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in ("proxy.md", "litellm.md"):
        for code in BLOCK.findall((DOCS / page).read_text(encoding="utf-8")):
            found.append((page, code))
    return found


def test_each_page_has_a_runnable_example() -> None:
    assert {page for page, _ in examples()} == {"proxy.md", "litellm.md"}


@pytest.mark.parametrize(("page", "code"), examples(), ids=lambda value: value[:12])
def test_doc_example_prints_what_it_says(page: str, code: str) -> None:
    lines = code.rstrip().splitlines()
    expected = []
    while lines and lines[-1].startswith("# "):
        expected.insert(0, lines.pop()[2:])
    assert expected, f"the example in {page} says nothing about its output"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == expected


def test_the_proxy_benchmark_measures_both_ratios() -> None:
    from benchmarks import proxy_overhead

    section = proxy_overhead.run(calls=10, repeats=1)
    values = {f.name: f.value for f in section.figures}
    assert len(values) == 2 and not any(math.isnan(v) for v in values.values()), values
    assert [row[0] for row in section.rows] == [
        proxy_overhead.DIRECT,
        proxy_overhead.PLAIN,
        proxy_overhead.BPO,
    ]
    assert "Proxy overhead" in section.to_markdown()
