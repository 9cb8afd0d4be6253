"""Prompt-lookup (n-gram) decoding in the local backend, on prompts whose rewrites copy them.

Prompt lookup proposes the next tokens by matching the last n-gram against the input, and the
model verifies them in one forward pass: a rewrite that copies long stretches of the prompt (most
BPO rewrites restate the prompt) needs fewer passes. Greedy decoding, so the outputs must be
identical; transformers supports it at batch size 1, so each prompt is its own call.
"""

from __future__ import annotations

import json
import time
from difflib import SequenceMatcher

from benchmarks._common import SHARED_DIR, Figure, Section, fmt_s, load_prompts


def copy_heavy_prompts(count: int) -> list[str]:
    """Prompts whose reference BPO rewrite keeps most of the prompt verbatim (longest first)."""
    path = SHARED_DIR / "data" / "bpo" / "val.json"
    if not path.is_file():
        return load_prompts(count)
    scored = []
    for record in json.loads(path.read_text(encoding="utf-8")):
        prompt, rewrite = record["instruction"], record["optimized_prompt"]
        if not 40 <= len(prompt) <= 600:
            continue
        blocks = SequenceMatcher(None, prompt, rewrite, autojunk=False).get_matching_blocks()
        copied = sum(b.size for b in blocks if b.size >= 12) / len(prompt)
        if copied >= 0.6:
            scored.append((len(prompt), prompt))
    scored.sort(reverse=True)
    chosen = [prompt for _, prompt in scored[:count]]
    return chosen if len(chosen) == count else (chosen + load_prompts(count))[:count]


def run(
    *, model: str | None, prompts: int = 16, repeats: int = 5, max_new_tokens: int = 64
) -> Section:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.settings import GenerationSettings

    texts = copy_heavy_prompts(prompts)
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=max_new_tokens)
    backend = LocalBackend(model, max_batch_size=1).load()
    timings: dict[bool, list[float]] = {False: [], True: []}
    outputs: dict[bool, list[list[int]]] = {}
    try:
        for lookup in (False, True):  # warm-up
            backend.prompt_lookup = lookup
            backend.generate(texts[:1], settings)
        for _ in range(repeats):
            for lookup in (False, True):
                backend.prompt_lookup = lookup
                started = time.perf_counter()
                results = [backend.generate([t], settings)[0] for t in texts]
                timings[lookup].append(time.perf_counter() - started)
                outputs[lookup] = [list(g.extra.get("token_ids") or g.text) for g in results]
        tokens = sum(len(ids) for ids in outputs[False])
    finally:
        backend.close()
    import statistics

    plain, lookup = statistics.median(timings[False]), statistics.median(timings[True])
    same = sum(a == b for a, b in zip(outputs[False], outputs[True], strict=True))
    speedup = plain / lookup
    section = Section(
        title="Prompt-lookup decoding",
        setup=(
            f"{prompts} real BPO prompts whose reference rewrite copies ≥ 60 % of the prompt, "
            f"greedy, `max_new_tokens={max_new_tokens}`, one prompt per call, "
            f"`prompt_lookup_tokens={backend.prompt_lookup_tokens}`, median of {repeats} runs."
        ),
        header=("Decoding", f"Time for {prompts} prompts", "New tokens/s"),
    )
    section.rows = [
        ("Plain greedy", fmt_s(plain), f"{tokens / plain:.1f}"),
        ("Prompt lookup", fmt_s(lookup), f"{tokens / lookup:.1f}"),
    ]
    section.figures = [
        Figure("Speed-up of prompt lookup", speedup, "x", "report", None),
        Figure("Identical outputs (greedy)", same, f"of {prompts}", f"{prompts}", same == prompts),
    ]
    return section
