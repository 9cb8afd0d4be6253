"""LocalBackend on a real (tiny, random) Llama run by OpenVINO GenAI, against transformers."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("openvino_genai")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bpo_integrations import BPOOptimizer  # noqa: E402
from bpo_integrations.backends.local import LocalBackend  # noqa: E402
from bpo_integrations.errors import BackendError, OptimizationTimeoutError  # noqa: E402
from bpo_integrations.result import FallbackReason  # noqa: E402
from bpo_integrations.settings import GenerationSettings  # noqa: E402
from bpo_integrations.template import format_bpo_prompt  # noqa: E402

PROMPTS = [
    "Tell me about Harry Potter",
    "Why is the sky blue? Explain the physics in detail, with two examples.",
    "Hi",
    "Give two specific examples of outstanding customer service.",
]
GREEDY = GenerationSettings.for_mode("greedy", max_new_tokens=10)


@pytest.fixture(scope="module")
def backend(tiny_llama_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(tiny_llama_dir, template="bpo", precision="f16").load()  # float's tokens
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def greedy_reference(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """What transformers generates greedily from ``ids``, one prompt at a time."""
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        output = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
        )
    return output[0, len(ids) :].tolist()


def test_concurrent_greedy_equals_transformers_one_at_a_time(
    backend: LocalBackend, reference
) -> None:
    generations = backend.generate(PROMPTS, replace(GREEDY, max_new_tokens=12))
    for prompt, generation in zip(PROMPTS, generations, strict=True):
        ids = backend.engine.encode(format_bpo_prompt(prompt))
        assert list(generation.token_ids) == greedy_reference(reference, ids, 12), prompt
        assert generation.prompt_tokens == len(ids)
        assert generation.finish_reason == "length"


def test_auto_template_uses_the_models_chat_template(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir)  # not trained by bpo-train: its chat template
    try:
        text = backend.format_prompt("Hi")
        assert backend.template_kind == "chat"
        assert "<|im_start|>user" in text and text.rstrip().endswith("assistant")
        assert "You are an expert prompt engineer" in text
    finally:
        backend.close()


def test_threads_share_the_engine_and_each_gets_its_own_rewrite(backend: LocalBackend) -> None:
    generations = backend.generate(PROMPTS, GREEDY)
    expected = {p: g.token_ids for p, g in zip(PROMPTS, generations, strict=True)}
    before = backend.stats["max_running"]
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(PROMPTS) * 2)

    def call(prompt: str) -> None:
        barrier.wait()
        results[prompt] = backend.generate([prompt], GREEDY)[0].token_ids

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
    assert backend.stats["max_running"] >= min(2, before or 2)


async def test_agenerate_does_not_block_the_event_loop(backend: LocalBackend) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    settings = replace(GREEDY, max_new_tokens=64)
    await asyncio.gather(*(backend.agenerate([p], settings) for p in PROMPTS))
    stop.set()
    await task
    assert ticks > 5


def test_seeded_sampling_is_reproducible_even_beside_other_calls(backend: LocalBackend) -> None:
    seeded = GenerationSettings.for_mode("stable", max_new_tokens=12, seed=7, temperature=1.5)
    first = backend.generate([PROMPTS[0]], seeded)[0].token_ids
    noise = threading.Thread(target=backend.generate, args=(PROMPTS, GREEDY))
    noise.start()
    second = backend.generate([PROMPTS[0]], seeded)[0].token_ids
    noise.join()
    assert first == second


def test_unseeded_sampling_varies(backend: LocalBackend) -> None:
    hot = GenerationSettings.for_mode("stable", max_new_tokens=12, temperature=2.0, top_p=1.0)
    outputs = {tuple(backend.generate([PROMPTS[0]], hot)[0].token_ids) for _ in range(4)}
    assert len(outputs) > 1


def test_stop_string_cuts_the_text_and_reports_stop_sequence(backend: LocalBackend) -> None:
    full = backend.generate([PROMPTS[0]], replace(GREEDY, max_new_tokens=20))[0]
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop.strip()
    cut = backend.generate([PROMPTS[0]], replace(GREEDY, max_new_tokens=20, stop=(stop,)))[0]
    assert cut.finish_reason == "stop_sequence"
    assert stop not in cut.text
    assert full.text.startswith(cut.text)
    assert cut.generated_tokens < full.generated_tokens


def test_timeout_raises_and_the_engine_goes_on(backend: LocalBackend) -> None:
    with pytest.raises(OptimizationTimeoutError, match="within"):
        backend.generate([PROMPTS[1]], replace(GREEDY, max_new_tokens=2000), timeout=0.01)
    assert backend.generate([PROMPTS[0]], GREEDY)[0].generated_tokens == 10


async def test_a_cancelled_call_stops_its_request(backend: LocalBackend) -> None:
    task = asyncio.create_task(
        backend.agenerate([PROMPTS[1]], replace(GREEDY, max_new_tokens=4000))
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.perf_counter()
    assert (await backend.agenerate([PROMPTS[0]], GREEDY))[0].generated_tokens == 10
    assert time.perf_counter() - started < 30


def test_lora_adapter_is_merged_like_peft_merges_it(
    tiny_llama_dir: Path, tmp_path: Path, reference
) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]
    )
    torch.manual_seed(1)  # lora_A's initialisation too: the adapter is the same in any test order
    lora = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a fresh LoRA is a no-op; make this one change things
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    merged = lora.merge_and_unload().eval()

    from_folder = LocalBackend(adapter_dir, template="bpo")  # base found in adapter_config.json
    explicit = LocalBackend(tiny_llama_dir, adapter=adapter_dir, template="bpo")
    plain = LocalBackend(tiny_llama_dir, template="bpo")
    try:
        ids = plain.engine.encode(format_bpo_prompt(PROMPTS[0]))
        expected = greedy_reference(merged, ids, 10)
        assert expected != greedy_reference(reference, ids, 10)
        assert list(from_folder.generate([PROMPTS[0]], GREEDY)[0].token_ids) == expected
        assert from_folder.resolved_adapter == str(adapter_dir)
        assert list(explicit.generate([PROMPTS[0]], GREEDY)[0].token_ids) == expected
        assert list(plain.generate([PROMPTS[0]], GREEDY)[0].token_ids) != expected
    finally:
        for backend in (plain, from_folder, explicit):
            backend.close()


@pytest.mark.parametrize("precision", ["q8_0", "q4_0"])
def test_quantized_precisions_prepare_their_own_model(tiny_llama_dir: Path, precision: str) -> None:
    from bpo_integrations.inference.prepare import prepare_model

    exact = prepare_model(tiny_llama_dir, precision="f16")
    quantized = prepare_model(tiny_llama_dir, precision=precision)  # type: ignore[arg-type]
    assert quantized.path != exact.path
    small = sum(f.stat().st_size for f in quantized.path.glob("openvino_model.bin"))
    big = sum(f.stat().st_size for f in exact.path.glob("openvino_model.bin"))
    assert small < big
    backend = LocalBackend(tiny_llama_dir, precision=precision, template="bpo")  # type: ignore[arg-type]
    try:
        assert backend.generate([PROMPTS[0]], GREEDY)[0].generated_tokens == 10
    finally:
        backend.close()


def test_the_backend_pickles_as_its_arguments(backend: LocalBackend) -> None:
    copy = pickle.loads(pickle.dumps(backend))
    try:
        assert not copy.loaded
        assert copy.model_id == backend.model_id and copy.template == "bpo"
        same = copy.generate([PROMPTS[0]], GREEDY)[0].token_ids
        assert same == backend.generate([PROMPTS[0]], GREEDY)[0].token_ids
    finally:
        copy.close()


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
    with pytest.raises(BackendError, match=r"holds no model"):
        LocalBackend(tmp_path).load()
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="names no base_model_name_or_path"):
        LocalBackend(tmp_path).load()


def test_a_transformers_model_without_optimum_intel_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(BackendError, match=r"optimum-intel.*optimum-cli export openvino"):
        LocalBackend(tmp_path).load()


def test_invalid_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        LocalBackend(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_size"):
        LocalBackend(max_batch_size=0)
    with pytest.raises(ValueError, match="template"):
        LocalBackend(template="llama")  # type: ignore[arg-type]


def test_generate_rejects_a_bare_string_and_accepts_an_empty_list(backend: LocalBackend) -> None:
    with pytest.raises(TypeError, match="not a single string"):
        backend.generate("Tell me about Harry Potter", GREEDY)  # type: ignore[arg-type]
    assert backend.generate([], GREEDY) == []


def test_lazy_thread_safe_load_happens_once(tiny_llama_dir: Path) -> None:
    backend = LocalBackend(tiny_llama_dir)
    engines = []
    barrier = threading.Barrier(4)

    def load() -> None:
        barrier.wait()
        engines.append(backend.load().engine)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len({id(e) for e in engines}) == 1
    finally:
        backend.close()
    assert not backend.loaded


def test_optimizer_end_to_end_on_the_local_backend(backend: LocalBackend) -> None:
    optimizer = BPOOptimizer(backend, mode="greedy", timeout=60)
    results = optimizer.optimize_batch(PROMPTS)
    assert [r.original for r in results] == PROMPTS
    assert all(r.backend == "local" for r in results)
    assert optimizer.max_concurrency == backend.max_concurrency


def test_a_prompt_with_an_unassigned_code_point_is_rewritten(backend: LocalBackend) -> None:
    """U+9B8FB is unassigned (schemathesis found it): openvino-tokenizers 2026.2 could not encode
    it; the ``local`` extra's openvino-genai (2026.4 or newer) can."""
    prompt = "Tell me about \U0009b8fb Harry Potter"
    generation = backend.generate([prompt], GenerationSettings.for_mode("greedy", max_new_tokens=4))
    assert len(generation[0].token_ids) == 4


def test_a_prompt_utf8_cannot_hold_fails_as_a_backend_error(backend: LocalBackend) -> None:
    """A lone surrogate (a broken JSON escape, a bad decode upstream) is refused by name, and the
    optimizer passes the prompt through with the backend's reason instead of an unexpected one."""
    prompt = "Tell me about \ud800 Harry Potter"
    with pytest.raises(BackendError, match="not valid Unicode"):
        backend.generate([prompt], GREEDY)

    result = BPOOptimizer(backend, mode="greedy", timeout=60).optimize(prompt)
    assert result.fell_back and result.optimized == prompt
    assert result.fallback_reason is FallbackReason.BACKEND_ERROR
    assert "surrogate" in result.fallback_detail


@pytest.mark.parametrize("length_rule", [True, False])
def test_the_length_rule_holds_whatever_the_settings(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch, length_rule: bool
) -> None:
    """The model's rule, not the mode's: plain greedy settings still ask the engine for at least
    the prompt's token count plus 5, as ``bpo serve`` does for every request it serves."""
    assert LocalBackend().length_rule  # on for the default optimizer, without loading it
    backend = LocalBackend(tiny_llama_dir, template="bpo", length_rule=length_rule)
    try:
        engine = backend.engine
        asked: list[int] = []
        submit = engine.submit

        def recording_submit(ids, params):  # the real engine, its requests recorded
            asked.append(params.min_new_tokens)
            return submit(ids, params)

        monkeypatch.setattr(engine, "submit", recording_submit)
        backend.generate(PROMPTS[:2], GREEDY)
        expected = [len(engine.encode(p)) + 5 if length_rule else 0 for p in PROMPTS[:2]]
        assert asked == [min(n, GREEDY.max_new_tokens) for n in expected]
    finally:
        backend.close()
