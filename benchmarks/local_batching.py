"""Local backend: one batched ``generate`` of N prompts vs the reference implementation's loop.

The reference (the BPO paper's ``infer_example.py``) tokenizes one prompt and calls
``model.generate`` once per prompt, with the paper's decoding (sampling, ``temperature=0.6``,
``top_p=0.9``). The local backend hands all prompts to one ``model.generate`` call (left-padded,
dynamic micro-batching). Same model object, same inputs, same settings.

The reference loop runs on the backend's worker thread (``run_in_worker``), as the paper's script
runs in a process of its own: on CPU each thread that runs torch gets its own OpenMP thread pool,
and with two pools on 2 cores every single-row step took 1.6x as long (64 vs 39 ms per token),
which flattered the batched figure before.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import Figure, Section, fmt_s, load_prompts

TARGET_RATIO = 5.0


def reference_loop(
    backend: Any, prompts: list[str], max_new_tokens: int, min_new_tokens: int = 0
) -> list[int]:
    """The paper's inference code, one ``model.generate`` per prompt; new tokens per prompt."""
    import torch

    model, tokenizer = backend.model, backend.tokenizer
    counts = []
    for prompt in prompts:
        inputs = tokenizer(backend.format_prompt(prompt), return_tensors="pt").to(backend.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=True,
                top_p=0.9,
                temperature=0.6,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[0][inputs["input_ids"].shape[1] :]
        tokenizer.decode(new, skip_special_tokens=True).strip()
        counts.append(int(new.shape[0]))
    return counts


def run(
    *, model: str | None, prompts: int = 16, repeats: int = 5, max_new_tokens: int = 64
) -> Section:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.settings import GenerationSettings

    texts = load_prompts(prompts)
    backend = LocalBackend(model, max_batch_size=prompts).load()
    settings = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens)
    try:
        backend.generate(texts[:2], settings)  # warm-up
        backend.run_in_worker(lambda: reference_loop(backend, texts[:1], max_new_tokens))
        before = backend.stats
        batched: list[float] = []
        looped: list[float] = []
        batched_tokens: list[int] = []
        looped_tokens: list[int] = []
        longest: list[int] = []
        for _ in range(repeats):
            started = time.perf_counter()
            generations = backend.generate(texts, settings)
            batched.append(time.perf_counter() - started)
            batched_tokens.append(sum(g.generated_tokens or 0 for g in generations))
            longest.append(max(g.generated_tokens or 0 for g in generations))
            started = time.perf_counter()
            counts = backend.run_in_worker(lambda: reference_loop(backend, texts, max_new_tokens))
            looped.append(time.perf_counter() - started)
            looped_tokens.append(sum(counts))
        after = backend.stats
        # the same prompts, every row made to write max_new_tokens: no longest row to wait for
        full = GenerationSettings.for_mode(
            "stable", max_new_tokens=max_new_tokens, min_new_tokens_from_prompt=True
        )
        templated = [backend.format_prompt(t) for t in texts]
        started = time.perf_counter()
        backend.generate_raw(templated, full, min_new_tokens=[max_new_tokens] * len(texts))
        full_batched = time.perf_counter() - started
        started = time.perf_counter()
        backend.run_in_worker(
            lambda: reference_loop(backend, texts, max_new_tokens, min_new_tokens=max_new_tokens)
        )
        full_looped = time.perf_counter() - started
    finally:
        backend.close()
    b, r = _median(batched), _median(looped)
    ratio = r / b
    section = Section(
        title="Local backend: batched vs the reference loop",
        setup=(
            f"{prompts} real BPO prompts, `max_new_tokens={max_new_tokens}`, the paper's sampling "
            f"(temperature 0.6, top_p 0.9), model `{backend.resolved_model}`, median of "
            f"{repeats} runs (the two take turns). Batched: one `LocalBackend.generate` call "
            f"({(after['batches'] - before['batches']) / repeats:g} `model.generate` call(s) per "
            f"run, up to {after['max_batch_rows']} rows each). Reference: one `model.generate` "
            "per prompt."
        ),
        header=("Way", f"Time for {prompts} prompts", "Prompts/s", "New tokens/s"),
    )
    section.rows = [
        (
            "`LocalBackend.generate` (batched)",
            fmt_s(b),
            f"{prompts / b:.2f}",
            f"{_median(batched_tokens) / b:.1f}",
        ),
        (
            "Reference loop (`model.generate` per prompt)",
            fmt_s(r),
            f"{prompts / r:.2f}",
            f"{_median(looped_tokens) / r:.1f}",
        ),
    ]
    section.figures = [
        Figure(
            f"Throughput, batched / reference loop ({prompts} prompts)",
            ratio,
            "x",
            f"≥ {TARGET_RATIO:g}x",
            ratio >= TARGET_RATIO,
        ),
        Figure(
            f"Throughput, batched / reference loop, every row writing {max_new_tokens} tokens "
            "(one run)",
            full_looped / full_batched,
            "x",
            "report",
            None,
        ),
    ]
    section.rows.append(
        (
            f"Every row made to write {max_new_tokens} tokens: batched / reference loop",
            f"{fmt_s(full_batched)} / {fmt_s(full_looped)}",
            f"{prompts / full_batched:.2f} / {prompts / full_looped:.2f}",
            f"{prompts * max_new_tokens / full_batched:.1f} / "
            f"{prompts * max_new_tokens / full_looped:.1f}",
        )
    )
    section.notes += [
        "Rows that finish leave the batch every `segment_tokens` new tokens, the rows share one "
        "prefill of the BPO template, and a batch samples with `NucleusSampler` (the same "
        "temperature/top-p distribution, without sorting the vocabulary); see `LocalBackend`. "
        "The ratio in prompts/s is the one a caller sees.",
        "The reference loop runs on the backend's worker thread (`run_in_worker`), as the paper's "
        "script runs in a process of its own: on CPU each thread that runs torch has its own "
        "OpenMP pool, and two pools on 2 cores made every single-row step 1.6x slower, which "
        "flattered the batched figure in earlier runs.",
        "A batch lasts as long as its longest row, and a step of one row costs about half a step "
        "of 16 (the weights are read either way): the ratio moves with the longest sampled "
        f"rewrite, {min(longest)}–{max(longest)} new tokens in these runs.",
    ]
    return section


def _median(values: list[float] | list[int]) -> float:
    import statistics

    return float(statistics.median(values))
