"""LocalBackend on a real (tiny, random) Llama: batching, micro-batching, settings, adapters."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bpo_integrations import BPOOptimizer  # noqa: E402
from bpo_integrations.backends.local import LocalBackend  # noqa: E402
from bpo_integrations.errors import BackendError, OptimizationTimeoutError  # noqa: E402
from bpo_integrations.settings import GenerationSettings  # noqa: E402
from bpo_integrations.template import format_bpo_prompt  # noqa: E402

PROMPTS = [
    "Tell me about Harry Potter",
    "Why is the sky blue? Explain the physics in detail, with two examples.",
    "Hi",
    "Give two specific examples of outstanding customer service.",
]
GREEDY = GenerationSettings.for_mode("greedy", max_new_tokens=10)
CPU = "cpu"  # exact comparisons in float32, also on machines with a GPU


@pytest.fixture(scope="module")
def backend(tiny_llama_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tiny_llama_dir, device=CPU, batch_wait_ms=20).load()
    yield backend
    backend.close()


def unbatched_greedy(backend: LocalBackend, text: str, max_new_tokens: int) -> list[int]:
    """The reference: one ``model.generate`` on one input, no padding, no micro-batcher."""
    tokenizer = backend.tokenizer
    encoded = tokenizer(
        text, add_special_tokens=not text.startswith(tokenizer.bos_token), return_tensors="pt"
    )
    with torch.inference_mode():
        output = backend.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, encoded["input_ids"].shape[1] :].tolist()


def test_llama2_chat_template_gives_the_bpo_template(backend: LocalBackend) -> None:
    assert backend.template_kind == "chat"
    for prompt in PROMPTS:
        assert backend.format_prompt(prompt) == "<s>" + format_bpo_prompt(prompt)


def test_batched_left_padded_greedy_equals_unbatched(backend: LocalBackend) -> None:
    texts = [backend.format_prompt(p) for p in PROMPTS]
    lengths = {backend.count_tokens(t) for t in texts}
    assert len(lengths) == len(texts), "the prompts must differ in length to exercise padding"
    before = backend.stats
    generations = backend.generate(PROMPTS, GREEDY)
    after = backend.stats
    assert after["batches"] - before["batches"] == 1  # all four rows in one generate call
    assert after["max_batch_rows"] >= len(PROMPTS)
    for text, generation in zip(texts, generations, strict=True):
        expected = unbatched_greedy(backend, text, GREEDY.max_new_tokens)
        assert generation.extra["token_ids"] == expected
        assert generation.text == backend.tokenizer.decode(expected, skip_special_tokens=True)
        assert generation.finish_reason == "length"
        assert generation.generated_tokens == GREEDY.max_new_tokens
        assert generation.extra["prompt_tokens"] == backend.count_tokens(text)


def test_raw_texts_get_one_bos_whether_or_not_they_carry_it(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from tokenizers import processors
    from transformers import AutoTokenizer

    # a copy of the tiny model whose tokenizer adds BOS itself, as Llama tokenizers do
    bos_dir = tmp_path / "tiny-llama-bos"
    shutil.copytree(tiny_llama_dir, bos_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    tokenizer.save_pretrained(bos_dir)

    raw = LocalBackend(bos_dir, device=CPU, template="bpo")
    try:
        text = format_bpo_prompt(PROMPTS[0])
        assert raw.format_prompt(PROMPTS[0]) == text
        body = raw.count_tokens(text)
        plain = raw.generate_raw([text], GREEDY)[0]
        with_bos = raw.generate_raw(["<s>" + text], GREEDY)[0]
        assert plain.extra["prompt_tokens"] == with_bos.extra["prompt_tokens"] == body + 1
        assert plain.extra["token_ids"] == with_bos.extra["token_ids"]
        assert plain.extra["token_ids"] == unbatched_greedy(raw, text, GREEDY.max_new_tokens)
        # the prompt API on the raw template gives exactly what generate_raw gives
        assert raw.generate([PROMPTS[0]], GREEDY)[0].extra["token_ids"] == plain.extra["token_ids"]
    finally:
        raw.close()


def test_threads_are_micro_batched_and_get_their_own_rows(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir, device=CPU, batch_wait_ms=300, max_batch_size=16).load()
    try:
        expected = {p: unbatched_greedy(backend, backend.format_prompt(p), 10) for p in PROMPTS}
        calls = PROMPTS * 2
        barrier = threading.Barrier(len(calls))
        results: dict[int, list[int]] = {}

        def call(index: int) -> None:
            barrier.wait()
            results[index] = backend.generate([calls[index]], GREEDY)[0].extra["token_ids"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [results[i] for i in range(len(calls))] == [expected[p] for p in calls]
        stats = backend.stats
        assert stats["requests"] == len(calls)
        assert stats["batches"] < len(calls)
        assert stats["max_batch_rows"] > 1
    finally:
        backend.close()


def test_oversized_call_is_split_into_max_batch_size_chunks(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir, device=CPU, max_batch_size=3, batch_wait_ms=0)
    try:
        prompts = PROMPTS + PROMPTS[:3]
        generations = backend.generate(prompts, GREEDY)
        assert backend.stats["batches"] == 3 and backend.stats["max_batch_rows"] == 3
        by_prompt = {p: g.extra["token_ids"] for p, g in zip(prompts, generations, strict=True)}
        for prompt in PROMPTS:
            assert by_prompt[prompt] == unbatched_greedy(backend, backend.format_prompt(prompt), 10)
    finally:
        backend.close()


async def test_agenerate_does_not_block_the_event_loop(backend: LocalBackend) -> None:
    settings = replace(GREEDY, max_new_tokens=60)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    started = time.perf_counter()
    results = await asyncio.gather(*(backend.agenerate([p], settings) for p in PROMPTS))
    elapsed = time.perf_counter() - started
    stop.set()
    await tick_task
    # a blocked loop would tick about once; a free one ticks throughout the generation
    assert ticks >= min(20, elapsed / 0.01)
    sync = backend.generate(PROMPTS, settings)
    assert [r[0].extra["token_ids"] for r in results] == [g.extra["token_ids"] for g in sync]


def test_seeded_sampling_is_reproducible_even_beside_other_calls(backend: LocalBackend) -> None:
    seeded = GenerationSettings.for_mode("stable", max_new_tokens=12, seed=7)
    first = backend.generate(PROMPTS[:2], seeded)
    again = backend.generate(PROMPTS[:2], seeded)
    assert [g.text for g in first] == [g.text for g in again]
    other_seed = backend.generate(PROMPTS[:2], replace(seeded, seed=8))
    assert [g.text for g in other_seed] != [g.text for g in first]

    # the same seeded call while other callers share the micro-batcher
    crowd = [threading.Thread(target=backend.generate, args=([p], seeded)) for p in PROMPTS]
    for thread in crowd:
        thread.start()
    crowded = backend.generate(PROMPTS[:2], seeded)
    for thread in crowd:
        thread.join(timeout=60)
    assert [g.text for g in crowded] == [g.text for g in first]


def test_unseeded_sampling_varies(backend: LocalBackend) -> None:
    sampled = GenerationSettings.for_mode("stable", max_new_tokens=12)
    texts = {backend.generate([PROMPTS[0]], sampled)[0].text for _ in range(3)}
    assert len(texts) > 1


def test_stop_string_cuts_the_text_and_reports_stop_sequence(backend: LocalBackend) -> None:
    settings = replace(GREEDY, max_new_tokens=20)
    full = backend.generate([PROMPTS[1]], settings)[0]
    found = re.search(r"[a-z]{2}", full.text[1:])  # plain letters: whole tokens, not byte pieces
    assert found is not None, full.text
    stop = found.group(0)
    cut = backend.generate([PROMPTS[1]], replace(settings, stop=(stop, "never-there")))[0]
    assert cut.finish_reason == "stop_sequence"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.generated_tokens < full.generated_tokens
    # a stop string that never appears changes nothing
    same = backend.generate([PROMPTS[1]], replace(settings, stop=("never-there",)))[0]
    assert same.text == full.text and same.finish_reason == "length"


def test_bad_words_are_never_generated(backend: LocalBackend) -> None:
    settings = replace(GREEDY, max_new_tokens=16)
    plain = backend.generate([PROMPTS[0]], settings)[0]
    tokenizer = backend.tokenizer
    banned_id = next(
        t
        for t in plain.extra["token_ids"]
        if tokenizer(tokenizer.decode([t]), add_special_tokens=False)["input_ids"] == [t]
    )
    word = tokenizer.decode([banned_id])
    banned = backend.generate([PROMPTS[0]], replace(settings, bad_words=(word,)))[0]
    assert banned_id in plain.extra["token_ids"]
    assert banned_id not in banned.extra["token_ids"]
    assert banned.extra["token_ids"] != plain.extra["token_ids"]


def test_min_new_tokens_from_prompt_holds_back_eos_per_row(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir, device=CPU).load()
    try:
        settings = replace(GREEDY, max_new_tokens=60)
        first_tokens = {g.extra["token_ids"][0] for g in backend.generate(PROMPTS, settings)}
        # make the token each prompt's rewrite starts with an eos: unconstrained, it stops at once
        backend.model.generation_config.eos_token_id = sorted(first_tokens)
        unconstrained = backend.generate(PROMPTS, settings)
        assert all(g.finish_reason == "eos_token" for g in unconstrained)
        assert all(g.generated_tokens == 1 and g.text == "" for g in unconstrained)

        held = backend.generate(PROMPTS, replace(settings, min_new_tokens_from_prompt=True))
        minimums = [backend.count_tokens(p) + 5 for p in PROMPTS]
        assert len(set(minimums)) == len(PROMPTS)  # one batch, a different minimum per row
        for minimum, generation in zip(minimums, held, strict=True):
            assert minimum <= generation.generated_tokens <= settings.max_new_tokens

        raw = backend.generate_raw(
            [backend.format_prompt(PROMPTS[2])],
            replace(settings, min_new_tokens_from_prompt=True),
            min_new_tokens=[9],
        )[0]
        assert 9 <= raw.generated_tokens <= settings.max_new_tokens
    finally:
        backend.close()


def test_prompt_lookup_gives_the_same_greedy_output(tiny_llama_dir: Path) -> None:
    lookup = LocalBackend(tiny_llama_dir, device=CPU, prompt_lookup=True, prompt_lookup_tokens=4)
    plain = LocalBackend(tiny_llama_dir, device=CPU)
    try:
        settings = replace(GREEDY, max_new_tokens=24)
        for prompt in PROMPTS[:2]:
            fast = lookup.generate([prompt], settings)[0]
            assert (
                fast.extra["token_ids"] == plain.generate([prompt], settings)[0].extra["token_ids"]
            )
            assert fast.finish_reason == "length" and fast.generated_tokens == 24
    finally:
        lookup.close()
        plain.close()


def test_timeout_raises_and_frees_the_worker(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir, device=CPU, batch_wait_ms=0).load()
    try:
        long_run = replace(GREEDY, max_new_tokens=1000)
        started = time.perf_counter()
        with pytest.raises(OptimizationTimeoutError, match="longer than"):
            backend.generate([PROMPTS[1]], long_run, timeout=0.05)
        # the abandoned batch stops early, so the next call is not stuck behind 1000 tokens
        quick = backend.generate([PROMPTS[0]], GREEDY, timeout=30)[0]
        assert quick.generated_tokens == GREEDY.max_new_tokens
        uncut = time.perf_counter()
        backend.generate([PROMPTS[1]], long_run)
        full_run = time.perf_counter() - uncut
        assert uncut - started < full_run
    finally:
        backend.close()


async def test_async_timeout_raises_the_optimizers_timeout_error(backend: LocalBackend) -> None:
    with pytest.raises(OptimizationTimeoutError):
        await backend.agenerate([PROMPTS[1]], replace(GREEDY, max_new_tokens=1000), timeout=0.05)
    assert (await backend.agenerate([PROMPTS[0]], GREEDY))[0].generated_tokens == 10


def test_lora_adapter_folder_is_detected_and_merged(tiny_llama_dir: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    lora = peft.get_peft_model(base, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a fresh LoRA is a no-op; make this one change things
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file()

    plain = LocalBackend(tiny_llama_dir, device=CPU)
    from_folder = LocalBackend(adapter_dir, device=CPU)  # base found through adapter_config.json
    explicit = LocalBackend(tiny_llama_dir, device=CPU, adapter=adapter_dir)
    text = plain.format_prompt(PROMPTS[0])
    encoded = plain.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        reference = lora.generate(**encoded, max_new_tokens=10, do_sample=False)
    expected = reference[0, encoded["input_ids"].shape[1] :].tolist()

    try:
        adapted = from_folder.generate([PROMPTS[0]], GREEDY)[0].extra["token_ids"]
        assert from_folder.resolved_adapter == str(adapter_dir)
        assert from_folder.resolved_model == str(tiny_llama_dir)
        assert adapted == expected
        assert explicit.generate([PROMPTS[0]], GREEDY)[0].extra["token_ids"] == expected
        assert plain.generate([PROMPTS[0]], GREEDY)[0].extra["token_ids"] != expected
    finally:
        for backend in (plain, from_folder, explicit):
            backend.close()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./no/such/model", "does not exist"),
        ("/tmp/definitely-missing-bpo-model", "does not exist"),
    ],
)
def test_missing_model_folder_is_a_clear_error(model: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        LocalBackend(model).load()


def test_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(BackendError, match=r"no config\.json"):
        LocalBackend(tmp_path).load()
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="base_model_name_or_path"):
        LocalBackend(tmp_path).load()


def test_invalid_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int8': choose one of bfloat16"):
        LocalBackend("x", dtype="int8")
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        LocalBackend("x", max_batch_size=0)
    with pytest.raises(ValueError, match="template must be"):
        LocalBackend("x", template="alpaca")  # type: ignore[arg-type]


def test_generate_rejects_a_bare_string_and_accepts_an_empty_list(backend: LocalBackend) -> None:
    with pytest.raises(TypeError, match="list of prompts"):
        backend.generate("Tell me about Harry Potter", GREEDY)
    assert backend.generate([], GREEDY) == []


def test_lazy_thread_safe_load_happens_once(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir)
    assert not backend.loaded
    models: list[object] = []
    barrier = threading.Barrier(6)

    def touch() -> None:
        barrier.wait()
        models.append(backend.model)

    threads = [threading.Thread(target=touch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert len(models) == 6 and all(m is models[0] for m in models)
        expected = {"cuda": (torch.bfloat16, torch.float16), "mps": (torch.float16,)}
        assert backend.model.dtype in expected.get(backend.device.type, (torch.float32,))
        assert threading.active_count() < 50
    finally:
        backend.close()
    assert not backend.loaded
    assert backend.generate([PROMPTS[0]], GREEDY)[0].generated_tokens == 10  # reloads after close
    backend.close()


def test_optimizer_end_to_end_on_the_local_backend(backend: LocalBackend) -> None:
    optimizer = BPOOptimizer(backend, mode="greedy", timeout=60)
    results = optimizer.optimize_batch(PROMPTS, contexts=[None, "ctx", None, None])
    assert [r.original for r in results] == PROMPTS
    assert all(r.backend == "local" for r in results)
    # a random model's rewrite may be rejected by the guards, but the backend itself must work
    for result in results:
        assert not (result.fallback_reason or "").startswith(("backend", "timeout", "unexpected"))
    assert results[1].text.endswith("\nctx")
    assert backend.cache_identity() == ("local", str(backend.model_id), None, "auto")
