"""The recipe's speed measurement: the first call of ``bpo optimize`` in a new process, the
load, warm latencies of one optimization (p50/p95) and a batch, on this machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpo_trainer.recipe.evaluate import local_backend, optimizer_variants

SPEED_PROMPTS = (
    "Tell me about Harry Potter",
    "How do I make a good cup of coffee?",
    "Write a poem about the sea.",
    "What are the benefits of regular exercise?",
    "Explain how a car engine works.",
    "Give me some tips for a job interview.",
    "Why is the sky blue?",
    "Suggest a name for my new bakery.",
    "How can I learn Python quickly?",
    "Summarize the causes of World War I.",
)
"""One-sentence prompts for the latency measurement."""


@dataclass(frozen=True)
class WarmLatency:
    """Warm latency of one optimization of a one-sentence prompt, with one decoding."""

    settings: str
    p50_s: float
    p95_s: float
    mean_tokens: float
    unchanged: int
    runs: int


@dataclass(frozen=True)
class SpeedReport:
    """Latencies in seconds; throughput in prompts per second (greedy)."""

    max_new_tokens: int
    first_call_s: float | None
    cold_process_s: float | None
    load_s: float
    warm: list[WarmLatency]
    batch_size: int
    batch_s: float
    batch_prompts_per_s: float
    machine: dict[str, Any]

    @property
    def warm_p50_s(self) -> float:
        return self.warm[0].p50_s


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_cli(prompt: str, max_new_tokens: int, cache: Path) -> float:
    """Wall time of ``bpo optimize PROMPT`` in a new process with ``cache`` as BPO_CACHE_DIR."""
    command = [
        sys.executable,
        "-c",
        "from bpo_integrations.cli import app; app()",
        "optimize",
        prompt,
        "--mode",
        "greedy",
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    env = {**os.environ, "BPO_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`bpo optimize` failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def measure_speed(
    base: str,
    adapter: Path,
    batch_prompts: Sequence[str],
    *,
    max_new_tokens: int,
    runs: int,
    device: str = "cpu",
    first_call: bool = False,
) -> SpeedReport:
    """Latency of one optimization (warm p50/p95), of a batch, and of the first call.

    Warm latencies are taken with the greedy decodings of rows (d) and (e) of the quality table
    (see :func:`optimizer_variants`), over :data:`SPEED_PROMPTS`; the batch is greedy.
    ``first_call`` times ``bpo optimize`` twice in fresh processes: with an empty cache (the
    GGUF conversion included) and again with the converted model (a cold process).
    """
    import torch

    from bpo_integrations.optimizer import BPOOptimizer

    first = cold = None
    if first_call:
        with tempfile.TemporaryDirectory(prefix="bpo-first-call-") as cache:
            first = _time_cli(SPEED_PROMPTS[0], max_new_tokens, Path(cache))
            cold = _time_cli(SPEED_PROMPTS[0], max_new_tokens, Path(cache))
    variants = list(optimizer_variants(max_new_tokens).items())[:2]
    backend = local_backend(base, adapter, device)
    warm: list[WarmLatency] = []
    try:
        started = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - started
        for name, settings in variants:
            optimizer = BPOOptimizer(backend, settings=settings, timeout=None, cache_size=0)
            optimizer.optimize(SPEED_PROMPTS[0])  # warm-up
            latencies, tokens, unchanged = [], [], 0
            for i in range(runs):
                prompt = SPEED_PROMPTS[i % len(SPEED_PROMPTS)]
                started = time.perf_counter()
                result = optimizer.optimize(prompt)
                latencies.append(time.perf_counter() - started)
                tokens.append(backend.count_tokens(result.optimized))
                unchanged += result.optimized.strip().rstrip(".?!") == prompt.rstrip(".?!")
            warm.append(
                WarmLatency(
                    settings=name[:3],
                    p50_s=round(statistics.median(latencies), 3),
                    p95_s=round(_percentile(latencies, 0.95), 3),
                    mean_tokens=round(statistics.fmean(tokens), 1),
                    unchanged=unchanged,
                    runs=runs,
                )
            )
        optimizer = BPOOptimizer(backend, settings=variants[0][1], timeout=None, cache_size=0)
        started = time.perf_counter()
        optimizer.optimize_batch(list(batch_prompts))
        batch_s = time.perf_counter() - started
    finally:
        backend.close()
    load_average = os.getloadavg() if hasattr(os, "getloadavg") else None
    return SpeedReport(
        max_new_tokens=max_new_tokens,
        first_call_s=None if first is None else round(first, 2),
        cold_process_s=None if cold is None else round(cold, 2),
        load_s=round(load_s, 2),
        warm=warm,
        batch_size=len(batch_prompts),
        batch_s=round(batch_s, 2),
        batch_prompts_per_s=round(len(batch_prompts) / batch_s, 2),
        machine={
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": None if load_average is None else [round(x, 2) for x in load_average],
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
    )
