"""LocalBackend batches in segments: rows that finish leave the batch, the rest keep going."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bpo_integrations.backends.local import LocalBackend  # noqa: E402
from bpo_integrations.settings import GenerationSettings  # noqa: E402

PROMPTS = [
    "Tell me about Harry Potter",
    "Why is the sky blue? Explain the physics in detail, with two examples.",
    "Hi",
    "Give two specific examples of outstanding customer service.",
]
CPU = "cpu"
SEGMENT = 4


@pytest.fixture
def backend(tiny_llama_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tiny_llama_dir, device=CPU, segment_tokens=SEGMENT).load()
    yield backend
    backend.close()


def unbatched_greedy(backend: LocalBackend, prompt: str, max_new_tokens: int) -> list[int]:
    """The reference: one ``model.generate`` on one input, no padding, no segments."""
    text = backend.format_prompt(prompt)
    encoded = backend.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        output = backend.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, encoded["input_ids"].shape[1] :].tolist()


def shared_prefix(backend: LocalBackend, prompts: list[str]) -> int:
    """Tokens the rows of a two-row batch share (each row keeps one of its own)."""
    rows = [backend.tokenizer(backend.format_prompt(p))["input_ids"] for p in prompts]
    shared = 0
    while shared < min(map(len, rows)) - 1 and len({row[shared] for row in rows}) == 1:
        shared += 1
    return shared


def test_greedy_over_many_segments_equals_unbatched(backend: LocalBackend) -> None:
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=11)  # not a multiple of 4
    before = backend.stats
    generations = backend.generate(PROMPTS, settings)
    after = backend.stats
    assert after["batches"] - before["batches"] == 1
    assert after["segments"] - before["segments"] == math.ceil(11 / SEGMENT)
    assert after["row_steps"] - before["row_steps"] == len(PROMPTS) * 11  # nobody finished early
    for prompt, generation in zip(PROMPTS, generations, strict=True):
        assert generation.extra["token_ids"] == unbatched_greedy(backend, prompt, 11)
        assert generation.finish_reason == "length" and generation.generated_tokens == 11


def test_a_row_that_hits_eos_early_leaves_the_batch(backend: LocalBackend) -> None:
    longest = 24
    references = [unbatched_greedy(backend, p, longest) for p in PROMPTS[:2]]
    early, late = references
    # an eos that the first row generates early and the second never does
    eos = next(t for t in early if t not in late)
    stop_at = early.index(eos) + 1
    assert stop_at <= SEGMENT * 2, "the early row must stop well before the longest one"
    backend.model.generation_config.eos_token_id = eos

    before = backend.stats
    first, second = backend.generate(PROMPTS[:2], _greedy(longest))
    after = backend.stats

    assert first.finish_reason == "eos_token"
    assert first.extra["token_ids"] == early[:stop_at]
    assert second.finish_reason == "length" and second.extra["token_ids"] == late
    row_steps = after["row_steps"] - before["row_steps"]
    # the finished row ran to the end of its segment, not to the end of the batch
    assert row_steps == longest + math.ceil(stop_at / SEGMENT) * SEGMENT
    assert row_steps < 2 * longest


def test_a_row_that_hits_a_stop_string_leaves_the_batch(backend: LocalBackend) -> None:
    longest = 24
    full = backend.generate([PROMPTS[1]], _greedy(longest))[0]
    other = backend.generate([PROMPTS[3]], _greedy(longest))[0]
    stop = next(
        m.group(0)
        for m in re.finditer(r"[a-z]{2}", full.text[1:])
        if m.group(0) not in other.text and len(full.text[: full.text.index(m.group(0))]) < 12
    )
    settings = replace(_greedy(longest), stop=(stop,))

    before = backend.stats
    cut, kept = backend.generate([PROMPTS[1], PROMPTS[3]], settings)
    after = backend.stats

    assert cut.finish_reason == "stop_sequence"
    assert cut.text == full.text[: full.text.index(stop)]
    assert kept.finish_reason == "length" and kept.extra["token_ids"] == other.extra["token_ids"]
    row_steps = after["row_steps"] - before["row_steps"]
    assert row_steps == longest + math.ceil(cut.generated_tokens / SEGMENT) * SEGMENT
    assert row_steps < 2 * longest


def test_per_row_minimum_length_holds_across_segments(backend: LocalBackend) -> None:
    settings = _greedy(40)
    first_tokens = {g.extra["token_ids"][0] for g in backend.generate(PROMPTS, settings)}
    backend.model.generation_config.eos_token_id = sorted(first_tokens)
    minimums = [3, 9, 14, 6]  # each ends inside a different segment
    held = backend.generate_raw(
        [backend.format_prompt(p) for p in PROMPTS],
        replace(settings, min_new_tokens_from_prompt=True),
        min_new_tokens=minimums,
    )
    for minimum, generation in zip(minimums, held, strict=True):
        assert minimum <= generation.generated_tokens <= settings.max_new_tokens


def test_a_request_that_arrives_mid_batch_joins_it(backend: LocalBackend) -> None:
    settings = _greedy(11)
    running = [PROMPTS[0], PROMPTS[3]]
    # one joiner wider than the running rows (their cache is re-padded), one narrower
    joining = [PROMPTS[1] + " Also compare it with the colour of sunsets on Mars.", "Hi"]
    late: list = []

    def submit_during_first_segment(module: object, args: object) -> None:
        if not late:  # runs on the worker thread, inside the running batch's first segment
            late.append(backend._submit_prompts(joining, settings))

    hook = backend.model.register_forward_pre_hook(submit_during_first_segment)
    try:
        before = backend.stats
        first = backend.generate(running, settings)
        joined = late[0].future.result(timeout=60)
        after = backend.stats
    finally:
        hook.remove()

    assert after["batches"] - before["batches"] == 1  # the late call ran inside the first batch
    assert after["joined_rows"] - before["joined_rows"] == len(joining)
    # the running rows and then the joiners each prefilled their shared template once
    reused = shared_prefix(backend, running) + shared_prefix(backend, joining)
    assert after["prefix_tokens_reused"] - before["prefix_tokens_reused"] == reused > 0
    for prompt, generation in zip(running + joining, first + joined, strict=True):
        assert generation.extra["token_ids"] == unbatched_greedy(backend, prompt, 11)
        assert generation.finish_reason == "length" and generation.generated_tokens == 11


def test_segment_tokens_must_be_positive(tiny_llama_dir: Path) -> None:
    with pytest.raises(ValueError, match="segment_tokens must be >= 1"):
        LocalBackend(tiny_llama_dir, segment_tokens=0)


def _greedy(max_new_tokens: int) -> GenerationSettings:
    return GenerationSettings.for_mode("greedy", max_new_tokens=max_new_tokens)


def test_a_waiting_call_ends_the_running_segment_early(backend: LocalBackend) -> None:
    settings = _greedy(11)
    shapes: list[tuple[int, int]] = []
    late: list = []

    def record(module: object, args: object, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        shapes.append(tuple(ids.shape) if ids is not None else (0, 0))
        if not late:  # during the running rows' prefill: the call waits from the first token on
            late.append(backend._submit_prompts(["Hi", "Tell me a joke"], settings))

    hook = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        backend.generate([PROMPTS[0], PROMPTS[3]], settings)
        late[0].future.result(timeout=60)
    finally:
        hook.remove()
    merged = shapes.index((4, 1))  # the first decoding step of all four rows
    # without the interrupt the two running rows would decode SEGMENT - 1 more steps alone
    assert (2, 1) not in shapes[:merged]
