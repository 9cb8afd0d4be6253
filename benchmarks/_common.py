"""What every benchmark shares: timing, the machine's description, the prompts, the report."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("BPO_SHARED_DIR", REPO.parent / "shared"))

FALLBACK_PROMPTS = [
    "Tell me about Harry Potter",
    "Why is the sky blue?",
    "Write a haiku about rain",
    "How do I sort a list of tuples by the second item in Python?",
    "Give two examples of outstanding customer service.",
    "What are the health benefits of green tea?",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Explain recursion to a beginner.",
]


@dataclass
class Figure:
    """One measured figure: a ratio or a number, with its target and whether it was met."""

    name: str
    value: float
    unit: str
    target: str
    met: bool | None
    detail: str = ""


@dataclass
class Section:
    """The result of one benchmark: its figures, a table of raw timings and notes."""

    title: str
    setup: str
    figures: list[Figure] = field(default_factory=list)
    rows: list[tuple[str, ...]] = field(default_factory=list)
    header: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", self.setup, ""]
        if self.figures:
            lines += ["| Figure | Measured | Target | Met |", "|---|---|---|---|"]
            for f in self.figures:
                met = "n/a" if f.met is None else ("yes" if f.met else "**no**")
                shown = f"{f.value:.3g} {f.unit}".strip()
                lines.append(table_row((f.name, shown, f.target, met)))
            lines.append("")
        if self.rows:
            lines += [table_row(self.header), "|" + "---|" * len(self.header)]
            lines += [table_row(row) for row in self.rows]
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        return "\n".join(lines)


def table_row(cells: tuple[str, ...]) -> str:
    """A markdown table row; a ``|`` inside a cell (``prompt | llm``) is escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """The median wall-clock seconds of ``fn()`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def per_call(fn: Callable[[], Any], *, calls: int, repeats: int) -> float:
    """The median over ``repeats`` of the mean seconds per call of ``calls`` calls of ``fn``."""

    def loop() -> None:
        for _ in range(calls):
            fn()

    return median_time(loop, repeats=repeats, warmup=1) / calls


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def machine() -> dict[str, str]:
    """Cores, CPU model and the versions that the figures depend on."""
    info = {
        "CPU": cpu_model(),
        "cores (usable)": str(usable_cores()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    for package in ("torch", "transformers", "langchain_core", "huggingface_hub", "openai"):
        try:
            module = __import__(package)
            info[package] = str(getattr(module, "__version__", "?"))
        except ImportError:
            info[package] = "not installed"
    try:
        import torch

        info["torch threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["load average (1 min, at start)"] = f"{os.getloadavg()[0]:.2f}"
    return info


def load_prompts(count: int) -> list[str]:
    """``count`` distinct real user prompts from the BPO data (``../shared``), else built-ins."""
    path = SHARED_DIR / "data" / "bpo" / "val.json"
    prompts: list[str] = []
    if path.is_file():
        records = json.loads(path.read_text(encoding="utf-8"))
        prompts = [r["instruction"] for r in records if 10 <= len(r["instruction"]) <= 300]
    prompts = list(dict.fromkeys(prompts or FALLBACK_PROMPTS))
    while len(prompts) < count:
        prompts += [f"{p} ({len(prompts)})" for p in prompts[: count - len(prompts)]]
    return prompts[:count]


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def run_child(code: str, spec: dict[str, Any], *, paths: Sequence[Path] = (REPO,)) -> Any:
    """Run ``code`` in a fresh Python with ``spec`` as its JSON argument; what it printed after
    ``RESULT `` on its last such line, parsed. A child that fails raises with its last error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=3600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?")
    return json.loads(lines[-1].removeprefix("RESULT "))
