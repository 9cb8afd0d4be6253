"""Local backend: N prompts given to the engine at once vs the paper's loop on the same engine.

The reference (the BPO paper's ``infer_example.py``) optimizes one prompt, waits for it, then the
next, with the paper's decoding (sampling, ``temperature=0.6``, ``top_p=0.9``). Batched: the same
prompts handed to ``LocalBackend.generate`` in one call, which submits them all to the engine's
continuous batching. Same backend, same engine, same settings; the two take turns.
"""

from __future__ import annotations

import statistics
import time

from benchmarks._common import Figure, Section, fmt_s, load_prompts

TARGET_RATIO = 5.0


def run(
    *, model: str | None, prompts: int = 16, repeats: int = 5, max_new_tokens: int = 64
) -> Section:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.settings import GenerationSettings

    texts = load_prompts(prompts)
    backend = LocalBackend(model, max_batch_size=prompts).load()
    settings = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens)
    forced = GenerationSettings.for_mode(
        "stable", max_new_tokens=max_new_tokens, min_new_tokens_from_prompt=True
    )
    templated = [backend.format_prompt(t) for t in texts]
    every = [max_new_tokens] * len(texts)
    try:
        backend.generate(texts[:2], settings)  # warm-up
        batched: list[float] = []
        looped: list[float] = []
        batched_tokens: list[int] = []
        looped_tokens: list[int] = []
        for _ in range(repeats):
            started = time.perf_counter()
            generations = backend.generate(texts, settings)
            batched.append(time.perf_counter() - started)
            batched_tokens.append(sum(g.generated_tokens or 0 for g in generations))
            started = time.perf_counter()
            counts = [backend.generate([t], settings)[0].generated_tokens or 0 for t in texts]
            looped.append(time.perf_counter() - started)
            looped_tokens.append(sum(counts))
        started = time.perf_counter()
        backend.generate_raw(templated, forced, min_new_tokens=every)
        full_batched = time.perf_counter() - started
        started = time.perf_counter()
        for text in templated:
            backend.generate_raw([text], forced, min_new_tokens=every[:1])
        full_looped = time.perf_counter() - started
        stats = backend.stats
    finally:
        backend.close()
    b, r = statistics.median(batched), statistics.median(looped)
    ratio = r / b
    section = Section(
        title="Local backend: batched vs the paper's loop",
        setup=(
            f"{prompts} real BPO prompts, `max_new_tokens={max_new_tokens}`, the paper's sampling "
            f"(temperature 0.6, top_p 0.9), model `{backend.resolved_model}`, median of "
            f"{repeats} runs (the two take turns). Batched: one `LocalBackend.generate` call, "
            f"all prompts in the engine at once (up to {stats.get('max_running', 0)} decoded "
            "together). Paper's loop: one `LocalBackend.generate` per prompt, one after another."
        ),
        header=("Way", f"Time for {prompts} prompts", "Prompts/s", "New tokens/s"),
    )
    section.rows = [
        (
            "`LocalBackend.generate` (batched)",
            fmt_s(b),
            f"{prompts / b:.2f}",
            f"{statistics.median(batched_tokens) / b:.1f}",
        ),
        (
            "Paper's loop (one prompt at a time)",
            fmt_s(r),
            f"{prompts / r:.2f}",
            f"{statistics.median(looped_tokens) / r:.1f}",
        ),
        (
            f"Every prompt made to write {max_new_tokens} tokens: batched / loop",
            f"{fmt_s(full_batched)} / {fmt_s(full_looped)}",
            f"{prompts / full_batched:.2f} / {prompts / full_looped:.2f}",
            f"{prompts * max_new_tokens / full_batched:.1f} / "
            f"{prompts * max_new_tokens / full_looped:.1f}",
        ),
    ]
    section.figures = [
        Figure(
            f"Throughput, batched / paper's loop ({prompts} prompts)",
            ratio,
            "x",
            f"≥ {TARGET_RATIO:g}x",
            ratio >= TARGET_RATIO,
        ),
        Figure(
            f"Throughput, batched / paper's loop, every prompt writing {max_new_tokens} tokens",
            full_looped / full_batched,
            "x",
            "report",
            None,
        ),
    ]
    section.notes.append(
        "The engine's continuous batching lets a finished rewrite leave and a waiting one join at "
        "every step, so a batch costs what its running rows cost; the ratio in prompts/s is the "
        "one a caller sees."
    )
    return section
