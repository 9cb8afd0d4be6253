"""Run the benchmarks and write ``BENCHMARKS.md``: ``python -m benchmarks [options]``.

Every figure is a ratio or a number measured in this one run, on this machine (described at the
top of the report). Sizes are options, so that a smoke test can run everything in seconds:

    python -m benchmarks                                  # all, default sizes
    python -m benchmarks --prompts 16 --repeats 5         # the same, explicitly
    python -m benchmarks --only overhead --only cache     # a subset
    python -m benchmarks --model path/to/model --output /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._common import REPO, Figure, Section, machine, table_row

NAMES = (
    "overhead",
    "cache",
    "proxy",
    "local",
    "served",
    "memory",
    "startup",
    "engines",
    "precision",
    "soak",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark bpo-integrations; write BENCHMARKS.md."
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per batch (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="new tokens per rewrite (model runs)"
    )
    parser.add_argument(
        "--calls", type=int, default=300, help="calls per run of the overhead and cache figures"
    )
    parser.add_argument(
        "--model", default=None, help="model folder or hub id (default: the built-in model)"
    )
    parser.add_argument(
        "--only", action="append", choices=NAMES, help="run only these (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    for name in ("prompts", "repeats", "max_new_tokens", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def benchmarks(args: argparse.Namespace) -> dict[str, Callable[[], Section]]:
    from benchmarks import (
        cache,
        engines,
        local_batching,
        memory,
        overhead,
        precision,
        proxy_overhead,
        serve_soak,
        served,
        startup,
    )

    sized = {"model": args.model, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens}
    return {
        "overhead": lambda: overhead.run(calls=args.calls, repeats=args.repeats),
        "cache": lambda: cache.run(prompts=args.prompts, repeats=args.repeats, calls=args.calls),
        "proxy": lambda: proxy_overhead.run(calls=args.calls, repeats=args.repeats),
        "local": lambda: local_batching.run(repeats=args.repeats, **sized),
        "served": lambda: served.run(repeats=args.repeats, **sized),
        "memory": lambda: memory.run(**sized),
        "startup": lambda: startup.run(model=args.model, repeats=args.repeats),
        "precision": lambda: precision.run(),
        "soak": lambda: serve_soak.run(model=args.model),
        "engines": lambda: engines.run(
            prompts=args.prompts, repeats=min(args.repeats, 3), max_new_tokens=args.max_new_tokens
        ),
    }


def report(
    sections: list[Section], failures: dict[str, str], info: dict[str, str], command: str
) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {today}. Every figure below was measured in this one run, "
        "side by side on this machine; medians of repeated runs. Rerun to update.",
        "",
        "| Machine | |",
        "|---|---|",
        *(table_row((key, value)) for key, value in info.items()),
        "",
        "## Summary",
        "",
        "| Benchmark | Figure | Measured | Target | Met |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        for f in section.figures:
            lines.append(table_row((section.title, f.name, _shown(f), f.target, _met(f))))
    for name, error in failures.items():
        lines.append(table_row((name, f"failed: {error.splitlines()[-1][:120]}", "", "", "**no**")))
    lines.append("")
    for section in sections:
        lines.append(section.to_markdown())
    if failures:
        lines += ["## Failures", ""]
        for name, error in failures.items():
            lines += [f"### {name}", "", "```", error.rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _shown(figure: Figure) -> str:
    return f"{figure.value:.3g} {figure.unit}".strip()


def _met(figure: Figure) -> str:
    return "n/a" if figure.met is None else ("yes" if figure.met else "**no**")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = machine()
    selected = args.only or list(NAMES)
    runners = benchmarks(args)
    sections: list[Section] = []
    failures: dict[str, str] = {}
    for name in selected:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            section = runners[name]()
        except Exception:
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr)
            continue
        sections.append(section)
        for f in section.figures:
            print(f"  {f.name}: {_shown(f)} (target {f.target}, met: {_met(f)})", file=sys.stderr)
        print(f"  ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    args.output.write_text(report(sections, failures, info, command.strip()), encoding="utf-8")
    print(f"[benchmarks] wrote {args.output}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    main()
