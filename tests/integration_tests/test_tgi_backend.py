"""TGIBackend through huggingface_hub's real InferenceClient against a scripted TGI on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

pytest.importorskip("huggingface_hub")

from huggingface_hub import constants as hf_constants

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import TGIBackend
from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.guards import Guards
from bpo_integrations.postprocess import clean_completion
from bpo_integrations.settings import AGGRESSIVE_CUT_MARKERS, GenerationSettings
from bpo_integrations.template import BPO_INSTRUCTION, format_bpo_prompt
from bpo_integrations.testing.servers import Fault, ScriptedServer, unused_url

_PREFIX = "[INST] " + BPO_INSTRUCTION + "\n"
_SUFFIX = " [/INST]"


def user_prompt(raw: str) -> str:
    """The user's prompt out of the raw BPO template; fails loudly on any other format."""
    assert raw.startswith(_PREFIX) and raw.endswith(_SUFFIX), f"not the BPO template: {raw!r}"
    return raw[len(_PREFIX) : -len(_SUFFIX)]


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test config sets HF_HUB_OFFLINE=1, which makes InferenceClient refuse even 127.0.0.1.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def server() -> Any:
    with ScriptedServer(lambda raw: f"{user_prompt(raw)} Answer step by step.") as srv:
        yield srv


def test_sync_optimize_sends_the_raw_template_and_mapped_settings(server) -> None:
    settings = GenerationSettings(
        temperature=0.7, top_p=0.8, max_new_tokens=77, seed=11, stop=("[KE", "###")
    )
    optimizer = BPOOptimizer(TGIBackend(server.url), settings=settings, timeout=10)
    result = optimizer.optimize("Why is the sky blue?", context="Rayleigh scattering notes")
    assert result.fell_back is False, result.fallback_reason
    assert result.backend == "tgi"
    assert result.optimized == "Why is the sky blue? Answer step by step."
    assert result.text == "Why is the sky blue? Answer step by step.\nRayleigh scattering notes"
    assert server.requests == [
        (
            "/",
            {
                "inputs": format_bpo_prompt("Why is the sky blue?"),
                "parameters": {
                    "details": True,
                    "do_sample": True,
                    "max_new_tokens": 77,
                    "return_full_text": False,
                    "seed": 11,
                    "stop": ["[KE", "###"],
                    "temperature": 0.7,
                    "top_p": 0.8,
                },
            },
        )
    ]


async def test_async_aggressive_mode_stops_at_cut_markers(server) -> None:
    server.responder = lambda raw: f"Explain {user_prompt(raw)} in detail. [KEEP] junk [PROTECT]"
    optimizer = BPOOptimizer(TGIBackend(server.url), mode="aggressive", timeout=10)
    result = await optimizer.aoptimize("photosynthesis")
    assert result.fell_back is False, result.fallback_reason
    assert result.optimized == "Explain photosynthesis in detail."
    params = server.requests[0][1]["parameters"]
    assert params["stop"] == list(AGGRESSIVE_CUT_MARKERS)
    assert (params["temperature"], params["top_p"], params["do_sample"]) == (0.9, 0.9, True)
    assert "bad_words" not in params


def test_greedy_mode_sends_no_sampling_parameters(server) -> None:
    # TGI rejects top_p=1.0 with HTTP 422; the scripted server validates it like TGI does.
    result = BPOOptimizer(TGIBackend(server.url), mode="greedy", timeout=10).optimize("Hi there")
    assert result.fell_back is False, result.fallback_reason
    params = server.requests[0][1]["parameters"]
    assert params["do_sample"] is False
    assert "temperature" not in params and "top_p" not in params


def test_batch_of_real_bpo_records_sync_and_async(bpo_val_records) -> None:
    records = [
        r
        for r in bpo_val_records
        if Guards().check(r["instruction"], clean_completion(r["optimized_prompt"])) is None
    ][:6]
    rewrites = {r["instruction"]: r["optimized_prompt"] for r in records}
    prompts = [r["instruction"] for r in records]
    with ScriptedServer(lambda raw: rewrites[user_prompt(raw)]) as srv:
        optimizer = BPOOptimizer(TGIBackend(srv.url), timeout=20, cache_size=0)
        results = optimizer.optimize_batch(prompts)
        assert [r.optimized for r in results] == [clean_completion(rewrites[p]) for p in prompts]
        assert not any(r.fell_back for r in results)
        assert sorted(body["inputs"] for _, body in srv.requests) == sorted(
            format_bpo_prompt(p) for p in prompts
        )
        srv.requests.clear()
        again = asyncio.run(optimizer.aoptimize_batch(prompts))
        assert [r.optimized for r in again] == [r.optimized for r in results]
        assert len(srv.requests) == len(prompts)


def _concurrency_probe(delay: float) -> tuple[Any, list[int]]:
    lock = threading.Lock()
    state = {"now": 0}
    peaks: list[int] = []

    def responder(raw: str) -> str:
        with lock:
            state["now"] += 1
            peaks.append(state["now"])
        time.sleep(delay)
        with lock:
            state["now"] -= 1
        return f"Rewrite: {user_prompt(raw)}"

    return responder, peaks


def test_generate_sends_a_list_concurrently_and_bounded() -> None:
    responder, peaks = _concurrency_probe(0.2)
    with ScriptedServer(responder) as srv:
        backend = TGIBackend(srv.url, max_concurrency=3)
        started = time.perf_counter()
        out = backend.generate([f"p{i}" for i in range(6)], GenerationSettings(), timeout=10)
        elapsed = time.perf_counter() - started
    assert [g.text for g in out] == [f"Rewrite: p{i}" for i in range(6)]
    assert max(peaks) == 3
    assert elapsed < 6 * 0.2
    assert {g.finish_reason for g in out} == {"eos_token"}
    assert out[0].generated_tokens == 2


async def test_agenerate_sends_a_list_concurrently_and_bounded() -> None:
    responder, peaks = _concurrency_probe(0.2)
    with ScriptedServer(responder) as srv:
        backend = TGIBackend(srv.url, max_concurrency=2)
        out = await backend.agenerate(["a", "b", "c", "d"], GenerationSettings(), timeout=10)
    assert [g.text for g in out] == ["Rewrite: a", "Rewrite: b", "Rewrite: c", "Rewrite: d"]
    assert max(peaks) == 2


def test_finish_reason_and_tokens_are_mapped(server) -> None:
    settings = GenerationSettings(max_new_tokens=3)
    (gen,) = TGIBackend(server.url).generate(["one two three four"], settings)
    assert gen.finish_reason == "length"
    assert gen.generated_tokens == 3
    assert gen.text == "one two three"
    stop = GenerationSettings(stop=("step",))
    (gen,) = TGIBackend(server.url).generate(["go"], stop)
    assert (gen.finish_reason, gen.text) == ("stop_sequence", "go Answer step")


def test_token_and_headers_are_sent(server) -> None:
    backend = TGIBackend(server.url, token="hf_secret", headers={"X-Tenant": "acme"})
    backend.generate(["hi"], GenerationSettings())
    headers = server.request_headers[0]
    assert headers["authorization"] == "Bearer hf_secret"
    assert headers["x-tenant"] == "acme"


@pytest.mark.parametrize("status", [429, 503])
def test_overload_is_transient_with_retry_after(server, status: int) -> None:
    server.inject(Fault("status", status=status, retry_after=1.5))
    with pytest.raises(TransientBackendError) as info:
        TGIBackend(server.url).generate(["x"], GenerationSettings())
    assert info.value.retry_after == 1.5
    assert f"HTTP {status}" in str(info.value) and server.url in str(info.value)


async def test_async_errors_are_mapped_the_same(server) -> None:
    server.inject(Fault("status", status=429, retry_after=2), Fault("malformed_json"))
    backend = TGIBackend(server.url)
    with pytest.raises(TransientBackendError) as info:
        await backend.agenerate(["x"], GenerationSettings())
    assert info.value.retry_after == 2
    with pytest.raises(BackendError, match="malformed JSON"):
        await backend.agenerate(["x"], GenerationSettings())
    with pytest.raises(BackendUnavailableError, match="bpo serve"):
        await TGIBackend(unused_url()).agenerate(["x"], GenerationSettings())


def test_client_errors_carry_the_server_message(server) -> None:
    too_many_stops = GenerationSettings(stop=("a", "b", "c", "d", "e"))
    with pytest.raises(BackendError, match="HTTP 422: `stop` supports up to 4") as info:
        TGIBackend(server.url).generate(["x"], too_many_stops)
    assert not isinstance(info.value, TransientBackendError)
    server.inject(Fault("status", status=401))
    with pytest.raises(BackendError, match="token="):
        TGIBackend(server.url).generate(["x"], GenerationSettings())


def test_connection_refused_names_the_url_and_how_to_start_a_server() -> None:
    url = unused_url()
    with pytest.raises(BackendUnavailableError) as info:
        TGIBackend(url).generate(["x"], GenerationSettings())
    message = str(info.value)
    assert url in message and "bpo serve" in message and "text-generation-inference" in message


def test_dropped_connection_and_malformed_json(server) -> None:
    server.inject(Fault("drop_connection"), Fault("malformed_json"))
    with pytest.raises(BackendUnavailableError, match="closed the connection"):
        TGIBackend(server.url).generate(["x"], GenerationSettings())
    with pytest.raises(BackendError, match="malformed JSON"):
        TGIBackend(server.url).generate(["x"], GenerationSettings())


def test_hub_offline_mode_gives_a_clear_error(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackendError, match="HF_HUB_OFFLINE") as info:
        TGIBackend(server.url).generate(["x"], GenerationSettings())
    assert not isinstance(info.value, BackendUnavailableError)  # not retried
    assert server.requests == []


def test_constructor_validates_and_cache_identity() -> None:
    with pytest.raises(ValueError, match="http"):
        TGIBackend("localhost:8080")
    with pytest.raises(ValueError, match="max_concurrency"):
        TGIBackend("http://localhost:8080", max_concurrency=0)
    assert TGIBackend("http://h:1/").cache_identity() == ("tgi", "http://h:1")
    assert TGIBackend("http://h:1").name == "tgi"


def test_client_timeout_is_a_timeout(server) -> None:
    server.inject(Fault("hang", seconds=10))
    started = time.perf_counter()
    with pytest.raises(OptimizationTimeoutError, match="no answer from TGI"):
        TGIBackend(server.url, timeout=0.3).generate(["x"], GenerationSettings())
    assert time.perf_counter() - started < 1.5


def test_a_cancelled_agenerate_logs_no_unretrieved_error(server, caplog) -> None:
    import gc

    server.inject(Fault("hang", seconds=10), Fault("hang", seconds=10))
    backend = TGIBackend(server.url)

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(backend.agenerate(["a", "b"], GenerationSettings(), timeout=5))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(cancel_midway())
        gc.collect()
    assert "never retrieved" not in caplog.text
