"""Served: 16 concurrent clients through the ``tgi`` backend against ``bpo serve``, vs one by one.

``bpo serve`` runs in its own process (the real CLI); the clients are
``BPOOptimizer(TGIBackend(url))`` calls from 16 threads at once, then the same prompts one after
another. The server's engine decodes concurrent requests together (continuous batching).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks._common import REPO, Figure, Section, fmt_s, load_prompts

TARGET_RATIO = 4.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServeProcess:
    """A running ``bpo serve``: where it listens, and its process id."""

    url: str
    pid: int


@contextmanager
def bpo_serve(
    model: str | None, *, max_batch_size: int, startup_timeout: float = 600.0
) -> Iterator[ServeProcess]:
    """``bpo serve`` in a child process, once ``/health`` answers."""
    port = _free_port()
    args = ["serve", "--port", str(port), "--max-batch-size", str(max_batch_size)]
    if model is not None:
        args += ["--model", model]
    command = [sys.executable, "-c", "from bpo_integrations.cli import app; app()", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bpo serve exited: {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bpo serve did not answer /health in {startup_timeout}s")
            time.sleep(0.2)
        yield ServeProcess(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def run(
    *, model: str | None, prompts: int = 16, repeats: int = 5, max_new_tokens: int = 64
) -> Section:
    from bpo_integrations import BPOOptimizer, GenerationSettings, OptimizationResult
    from bpo_integrations.backends import TGIBackend
    from bpo_integrations.testing.servers import hf_inference_online

    texts = load_prompts(prompts)
    settings = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens)
    concurrent: list[float] = []
    sequential: list[float] = []
    with bpo_serve(model, max_batch_size=prompts) as server, hf_inference_online():
        optimizer = BPOOptimizer(
            TGIBackend(server.url), settings=settings, timeout=3600, cache_size=0
        )

        def check(results: list[OptimizationResult]) -> None:
            failed = [r.fallback_reason for r in results if r.fallback_reason is not None]
            broken = [reason for reason in failed if reason.is_backend_failure]
            if broken:
                raise RuntimeError(f"requests to bpo serve failed: {broken[:3]}")

        with ThreadPoolExecutor(prompts) as pool:
            check(list(pool.map(optimizer.optimize, texts[:2])))  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                check(list(pool.map(optimizer.optimize, texts)))
                concurrent.append(time.perf_counter() - started)
                started = time.perf_counter()
                check([optimizer.optimize(t) for t in texts])
                sequential.append(time.perf_counter() - started)
    c, s = statistics.median(concurrent), statistics.median(sequential)
    ratio = s / c
    section = Section(
        title="Served: concurrent clients vs sequential",
        setup=(
            f"`bpo serve --max-batch-size {prompts}` in its own process; `BPOOptimizer("
            f"TGIBackend(url))` from {prompts} threads at once vs the same {prompts} prompts one "
            f"after another; sampling, `max_new_tokens={max_new_tokens}`, median of {repeats} "
            "runs (the two take turns)."
        ),
        header=("Clients", f"Time for {prompts} prompts", "Prompts/s"),
    )
    section.rows = [
        (f"{prompts} concurrent", fmt_s(c), f"{prompts / c:.2f}"),
        ("1 at a time", fmt_s(s), f"{prompts / s:.2f}"),
    ]
    section.figures = [
        Figure(
            f"Throughput, {prompts} concurrent / sequential",
            ratio,
            "x",
            f"≥ {TARGET_RATIO:g}x",
            ratio >= TARGET_RATIO,
        )
    ]
    return section
