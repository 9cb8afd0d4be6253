"""The OpenAI backends through the real openai client against a scripted server on 127.0.0.1.

``OpenAIBackend`` sends the raw BPO template to ``/v1/completions`` (vLLM, SGLang, llama.cpp, TGI,
``bpo serve``), or the BPO user message to ``/v1/chat/completions`` with ``api="chat"``; its 404s
are explained from what the server says it serves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("openai")

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import OpenAIBackend, OpenAIPromptEngineerBackend
from bpo_integrations.backends.openai import DEFAULT_PROMPT_ENGINEER_INSTRUCTION
from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.settings import AGGRESSIVE_CUT_MARKERS, GenerationSettings
from bpo_integrations.template import BPO_INSTRUCTION, format_bpo_message, format_bpo_prompt
from bpo_integrations.testing.servers import Fault, ScriptedServer, unused_url

MODEL = "THUDM/BPO"
RAW_HEAD, RAW_TAIL = "[INST] " + BPO_INSTRUCTION + "\n", " [/INST]"


def user_prompt(raw: str) -> str:
    """The user's prompt out of the raw BPO template; fails loudly on any other format."""
    assert raw.startswith(RAW_HEAD) and raw.endswith(RAW_TAIL), f"not the BPO template: {raw!r}"
    return raw[len(RAW_HEAD) : -len(RAW_TAIL)]


def user_prompt_of_message(message: str) -> str:
    """The user's prompt out of the BPO chat message; fails loudly on any other format."""
    assert message.startswith(BPO_INSTRUCTION + "\n"), f"not the BPO message: {message!r}"
    return message[len(BPO_INSTRUCTION) + 1 :]


@pytest.fixture
def server() -> Any:
    responder = lambda raw: f"{user_prompt(raw)} Give examples."  # noqa: E731
    with ScriptedServer(responder, model_id=MODEL, flavor="vllm", lora_modules=["bpo"]) as srv:
        yield srv


def backend_for(server: ScriptedServer, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(kwargs.pop("model", MODEL), base_url=server.url + "/v1", **kwargs)


def test_sync_optimize_sends_the_raw_template_to_completions(server) -> None:
    settings = GenerationSettings(temperature=0.7, top_p=0.8, max_new_tokens=77, seed=11)
    optimizer = BPOOptimizer(backend_for(server), settings=settings, timeout=10)
    result = optimizer.optimize("What is a monad?")
    assert result.fell_back is False, result.fallback_reason
    assert (result.optimized, result.backend) == ("What is a monad? Give examples.", "openai")
    assert server.requests == [
        (
            "/v1/completions",
            {
                "model": MODEL,
                "prompt": format_bpo_prompt("What is a monad?"),
                "max_tokens": 77,
                "temperature": 0.7,
                "top_p": 0.8,
                "seed": 11,
            },
        )
    ]


def test_a_lora_module_is_named_as_the_model(server) -> None:
    backend = backend_for(server, model="bpo")
    result = BPOOptimizer(backend, timeout=10).optimize("Explain DNS")
    assert result.fell_back is False, result.fallback_reason
    assert server.requests[0][1]["model"] == "bpo"
    assert backend.cache_identity() != backend_for(server).cache_identity()


def test_chat_mode_sends_the_bpo_message(server) -> None:
    server.chat_responder = lambda messages: (
        user_prompt_of_message(messages[-1]["content"]) + " Be concrete."
    )
    backend = backend_for(server, api="chat")
    result = BPOOptimizer(backend, timeout=10).optimize("What is a monad?")
    assert result.fell_back is False, result.fallback_reason
    assert result.optimized == "What is a monad? Be concrete."
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": format_bpo_message("What is a monad?")}]
    assert backend.cache_identity() == ("openai", server.url + "/v1", MODEL, "chat")
    assert backend_for(server).cache_identity() == (
        "openai",
        server.url + "/v1",
        MODEL,
        "completions",
    )
    with pytest.raises(ValueError, match="'completions' or 'chat'"):
        backend_for(server, api="generate")


async def test_async_aggressive_mode_sends_cut_markers_as_stop(server) -> None:
    server.responder = lambda raw: f"Explain {user_prompt(raw)} fully. [KEEP] junk"
    optimizer = BPOOptimizer(backend_for(server), mode="aggressive", timeout=10)
    result = await optimizer.aoptimize("entropy")
    assert result.fell_back is False, result.fallback_reason
    assert result.optimized == "Explain entropy fully."
    body = server.requests[0][1]
    assert body["stop"] == list(AGGRESSIVE_CUT_MARKERS)
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.9, 0.9, 512)


def test_greedy_mode_sends_temperature_zero(server) -> None:
    BPOOptimizer(backend_for(server), mode="greedy", timeout=10).optimize("Hello")
    body = server.requests[0][1]
    assert (body["temperature"], body["top_p"]) == (0.0, 1.0)


def test_batch_sync_and_async_in_order(server) -> None:
    prompts = [f"Question number {i}?" for i in range(5)]
    optimizer = BPOOptimizer(backend_for(server), timeout=10, cache_size=0)
    results = optimizer.optimize_batch(prompts)
    assert [r.optimized for r in results] == [f"{p} Give examples." for p in prompts]
    again = asyncio.run(optimizer.aoptimize_batch(prompts))
    assert [r.optimized for r in again] == [r.optimized for r in results]
    sent = sorted(body["prompt"] for _, body in server.requests)
    assert sent == sorted([format_bpo_prompt(p) for p in prompts] * 2)


def test_generate_maps_finish_reasons_and_usage(server) -> None:
    backend = backend_for(server)
    out = backend.generate(["a b c", "d"], GenerationSettings(max_new_tokens=2))
    assert [g.text for g in out] == ["a b", "d Give"]
    assert {g.finish_reason for g in out} == {"length"}
    (done,) = backend.generate(["z"], GenerationSettings())
    assert (done.finish_reason, done.generated_tokens) == ("eos_token", 3)
    (cut,) = backend.generate(["z"], GenerationSettings(stop=("Give",)))
    assert (cut.text, cut.finish_reason) == ("z ", "stop_sequence")  # vLLM's stop_reason
    backend.close()


def test_prompt_engineer_backend_sends_instruction_and_prompt(server) -> None:
    server.chat_responder = lambda messages: (
        "<prompt>\nExplain closures in JavaScript with an example.\n</prompt>"
    )
    backend = OpenAIPromptEngineerBackend(MODEL, base_url=server.url + "/v1")
    result = BPOOptimizer(backend, timeout=10).optimize("js closures?")
    assert result.fell_back is False, result.fallback_reason
    assert result.optimized == "Explain closures in JavaScript with an example."
    assert result.backend == "openai-prompt-engineer"
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_PROMPT_ENGINEER_INSTRUCTION},
        {"role": "user", "content": "<prompt>\njs closures?\n</prompt>"},
    ]
    custom = OpenAIPromptEngineerBackend(MODEL, base_url=server.url + "/v1", instruction="Rewrite.")
    assert custom.cache_identity() != backend.cache_identity()
    custom.generate(["x"], GenerationSettings())
    assert server.requests[-1][1]["messages"][0] == {"role": "system", "content": "Rewrite."}


def test_default_instruction_follows_the_papers_baseline() -> None:
    text = DEFAULT_PROMPT_ENGINEER_INSTRUCTION.lower()
    for needle in (
        "helpful and harmless",
        "placeholder",
        "code",
        "quotation",
        "only the rewritten",
    ):
        assert needle in text


@pytest.mark.parametrize("status", [429, 503])
def test_overload_is_transient_with_retry_after(server, status: int) -> None:
    server.inject(Fault("status", status=status, retry_after=0.75))
    with pytest.raises(TransientBackendError) as info:
        backend_for(server).generate(["x"], GenerationSettings())
    assert info.value.retry_after == 0.75
    assert len(server.requests) == 1  # the openai client's own retries are off


def test_server_500_is_not_transient(server) -> None:
    server.inject(Fault("status", status=500))
    with pytest.raises(BackendError, match="HTTP 500") as info:
        backend_for(server).generate(["x"], GenerationSettings())
    assert not isinstance(info.value, TransientBackendError)


# -- 404s explained --------------------------------------------------------------------------


async def test_a_model_not_served_lists_what_is_served_and_how_to_load_a_lora(server) -> None:
    backend = backend_for(server, model="no-such-model")
    with pytest.raises(BackendError) as info:
        await backend.agenerate(["x"], GenerationSettings())
    message = str(info.value)
    assert "'no-such-model' is not served by" in message
    assert f"it serves [{MODEL!r}] and LoRA modules ['bpo']" in message
    assert "--enable-lora --lora-modules no-such-model=/path/to/adapter" in message
    assert server.paths() == ["/v1/completions", "/v1/models"]


def test_a_lora_not_loaded_says_so() -> None:
    with (
        ScriptedServer(model_id="base-model", flavor="sglang") as srv,
        pytest.raises(BackendError) as info,
    ):
        backend_for(srv, model="bpo").generate(["x"], GenerationSettings())
    message = str(info.value)
    assert "it serves ['base-model'] and no LoRA module" in message
    assert "SGLang: `--enable-lora --lora-paths bpo=/path/to/adapter`" in message


def test_a_tgi_root_given_as_the_openai_base_url_names_both_fixes() -> None:
    with ScriptedServer(model_id=MODEL) as tgi:  # TGI: /info at the root, OpenAI under /v1
        with pytest.raises(BackendError) as info:
            OpenAIBackend(MODEL, base_url=tgi.url).generate(["x"], GenerationSettings())
        message = str(info.value)
        assert f"{tgi.url} is the root of a TGI server" in message
        assert f"base_url='{tgi.url}/v1'" in message and f"TGIBackend('{tgi.url}')" in message
        assert tgi.paths() == ["/completions", "/models", "/info"]
        (fixed,) = OpenAIBackend(MODEL, base_url=tgi.url + "/v1").generate(
            ["x"], GenerationSettings()
        )
        assert fixed.text == format_bpo_prompt("x")  # the default responder echoes


def test_a_vllm_url_without_v1_says_add_v1(server) -> None:
    with pytest.raises(BackendError) as info:
        OpenAIBackend(MODEL, base_url=server.url).generate(["x"], GenerationSettings())
    assert f"no OpenAI API at {server.url}" in str(info.value)
    assert f"base_url='{server.url}/v1'" in str(info.value)


def test_a_404_for_a_served_model_suggests_the_other_api(server) -> None:
    server.inject(Fault("status", status=404))  # /v1/completions missing, /v1/models lists MODEL
    with pytest.raises(BackendError) as info:
        backend_for(server).generate(["x"], GenerationSettings())
    assert f"serves {MODEL!r} but has no /completions route" in str(info.value)
    assert "pass api='chat'" in str(info.value)


async def test_connection_refused_names_the_base_url() -> None:
    url = unused_url() + "/v1"
    with pytest.raises(BackendUnavailableError) as info:
        await OpenAIBackend(MODEL, base_url=url).agenerate(["x"], GenerationSettings())
    assert url in str(info.value) and "vllm serve" in str(info.value)


def test_malformed_json_and_dropped_connection(server) -> None:
    server.inject(Fault("malformed_json"), Fault("drop_connection"))
    with pytest.raises(BackendError, match="malformed JSON"):
        backend_for(server).generate(["x"], GenerationSettings())
    with pytest.raises(BackendUnavailableError, match="closed the connection"):
        backend_for(server).generate(["x"], GenerationSettings())


def test_api_key_rules(monkeypatch: pytest.MonkeyPatch, server) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIPromptEngineerBackend("gpt-4o-mini")
    backend_for(server).generate(["x"], GenerationSettings())
    assert server.request_headers[-1]["authorization"] == "Bearer EMPTY"
    backend_for(server, api_key="sk-test").generate(["x"], GenerationSettings())
    assert server.request_headers[-1]["authorization"] == "Bearer sk-test"
    with pytest.raises(ValueError, match="model"):
        OpenAIBackend("", base_url=server.url + "/v1")


async def test_request_timeout_is_a_timeout(server) -> None:
    server.inject(Fault("hang", seconds=10))
    with pytest.raises(OptimizationTimeoutError, match="no answer from"):
        await backend_for(server).agenerate(["x"], GenerationSettings(), timeout=0.3)
