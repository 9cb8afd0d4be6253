"""The local backend's fast paths: nucleus sampling for batches, the shared prompt prefix, and
all torch work on the worker thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from bpo_integrations.backends._sampling import NucleusSampler  # noqa: E402
from bpo_integrations.backends.local import LocalBackend  # noqa: E402
from bpo_integrations.settings import GenerationSettings  # noqa: E402

PROMPTS = [
    "Tell me about Harry Potter",
    "Why is the sky blue? Explain the physics in detail, with two examples.",
    "Hi",
    "Give two specific examples of outstanding customer service.",
]


@pytest.fixture(scope="module")
def backend(tiny_llama_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tiny_llama_dir, device="cpu", segment_tokens=4).load()
    yield backend
    backend.close()


def transformers_nucleus(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """What ``generate(do_sample=True, temperature=..., top_p=...)`` draws from."""
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores))
    return warped.softmax(-1)


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0])
def test_nucleus_sampler_draws_from_the_same_distribution_as_transformers(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(32, 5000, generator=generator) * scale
    sampler = NucleusSampler(temperature=0.6, top_p=0.9, candidates=64)
    index, kept = sampler.kept_probabilities(scores)
    ours = torch.zeros_like(scores).scatter_(-1, index, kept)
    reference = transformers_nucleus(scores.clone(), 0.6, 0.9)
    total_variation = 0.5 * (ours - reference).abs().sum(-1)
    assert float(total_variation.max()) < 1e-4


def test_rows_whose_nucleus_is_wider_than_the_candidates_are_sorted_in_full() -> None:
    scores = torch.stack([torch.zeros(1000), torch.arange(1000.0) * 3])  # flat, and peaked
    sampler = NucleusSampler(temperature=1.0, top_p=0.9, candidates=8)
    index, kept = sampler.kept_probabilities(scores)
    assert int((kept[0] > 0).sum()) == 900  # 90 % of a flat distribution: wider than 8
    assert int((kept[1] > 0).sum()) == 1 and int(index[1, 0]) == 999


def test_nucleus_sampler_returns_scores_whose_argmax_is_the_drawn_token() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[2.0, 1.9, -5.0, -5.0]]).repeat(2000, 1)
    drawn = NucleusSampler(temperature=1.0, top_p=0.99)(None, scores).argmax(-1)  # type: ignore[arg-type]
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[2] == counts[3] == 0  # outside the nucleus
    share = counts[0] / 2000  # e^0.1 / (1 + e^0.1) = 0.525
    assert 0.48 < share < 0.57


@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, 0.9), (0.6, 0.0), (0.6, 1.5)])
def test_nucleus_sampler_rejects_bad_settings(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError, match=r"temperature|top_p"):
        NucleusSampler(temperature=temperature, top_p=top_p)


def test_a_batch_sampled_with_a_tiny_nucleus_is_the_greedy_batch(backend: LocalBackend) -> None:
    greedy = GenerationSettings.for_mode("greedy", max_new_tokens=9)
    narrow = replace(
        GenerationSettings.for_mode("stable", max_new_tokens=9), top_p=1e-6, temperature=0.6
    )
    expected = [g.extra["token_ids"] for g in backend.generate(PROMPTS, greedy)]
    assert [g.extra["token_ids"] for g in backend.generate(PROMPTS, narrow)] == expected


def test_rows_of_a_batch_prefill_their_shared_template_once(backend: LocalBackend) -> None:
    greedy = GenerationSettings.for_mode("greedy", max_new_tokens=6)
    texts = [backend.format_prompt(p) for p in PROMPTS]
    shared = len(
        [
            column
            for column in zip(*(backend.tokenizer(t)["input_ids"] for t in texts), strict=False)
            if len(set(column)) == 1
        ]
    )
    before = backend.stats["prefix_tokens_reused"]
    batched = backend.generate(PROMPTS, greedy)
    assert backend.stats["prefix_tokens_reused"] - before == shared * (len(PROMPTS) - 1) > 0
    alone = [backend.generate([p], greedy)[0] for p in PROMPTS]  # one row: nothing shared
    assert [g.extra["token_ids"] for g in batched] == [g.extra["token_ids"] for g in alone]


def test_the_worker_thread_loads_and_runs_the_model(tiny_llama_dir: Path) -> None:
    seen: list[str] = []

    class Recording(LocalBackend):
        def _load_weights(self, *args: object) -> tuple[object, object]:
            seen.append(threading.current_thread().name)
            return super()._load_weights(*args)  # type: ignore[arg-type]

    backend = Recording(tiny_llama_dir, device="cpu").load()
    try:
        assert seen == ["bpo-local-backend"]
        assert backend.run_in_worker(lambda: threading.current_thread().name) == seen[0]
        with pytest.raises(ZeroDivisionError):
            backend.run_in_worker(lambda: 1 / 0)
        greedy = GenerationSettings.for_mode("greedy", max_new_tokens=3)
        assert backend.generate(["still works"], greedy)[0].generated_tokens == 3
    finally:
        backend.close()


def test_a_model_that_fails_to_load_leaves_no_worker_behind(tmp_path: Path) -> None:
    from bpo_integrations.errors import BackendError

    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")

    def workers() -> int:
        return sum(t.name == "bpo-local-backend" for t in threading.enumerate())

    before = workers()
    backend = LocalBackend(tmp_path, device="cpu")
    with pytest.raises(BackendError, match="could not load"):
        backend.load()
    assert not backend.loaded and workers() == before


def test_arun_in_worker_runs_on_the_worker_and_a_cancelled_call_never_runs(
    tiny_llama_dir: Path,
) -> None:
    import asyncio

    backend = LocalBackend(tiny_llama_dir, device="cpu").load()
    release = threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        assert await backend.arun_in_worker(lambda: threading.current_thread().name) == (
            "bpo-local-backend"
        )
        busy = asyncio.ensure_future(backend.arun_in_worker(lambda: release.wait(10)))
        queued = asyncio.ensure_future(backend.arun_in_worker(lambda: ran.append("queued")))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await busy is True
        await backend.arun_in_worker(lambda: None)  # the queue has moved past the cancelled call

    try:
        asyncio.run(scenario())
        assert ran == []
    finally:
        backend.close()
