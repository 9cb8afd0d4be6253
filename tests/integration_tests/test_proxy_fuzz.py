"""Property-based fuzzing of ``bpo proxy`` from an OpenAI-compatible schema, with schemathesis.

The schema is the one LiteLLM's package ships (``litellm/proxy/openapi.json``: OpenAI's
``/chat/completions`` and ``/models``), read where it is installed, never copied here. The proxy
runs on a real socket in front of the scripted OpenAI-compatible upstream, with an instant
optimizer, so every request goes through the rewrite and out to the upstream and back. Valid and
invalid requests: no answer may be a server error, none may hang. Examples are bounded and
derandomized, so the run is short and the same in CI.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from fuzzing import fuzz_settings  # noqa: E402
from hypothesis import given  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from bpo_integrations import BPOOptimizer  # noqa: E402
from bpo_integrations.backends import CallableBackend  # noqa: E402
from bpo_integrations.proxy import ProxyConfig, create_app, serve_in_thread  # noqa: E402
from bpo_integrations.testing.servers import ScriptedServer  # noqa: E402

MODEL = "scripted-bpo"
EXAMPLES = 25
_USER = b'[{"role": "user", "content": "Hi"}]'


def _litellm_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("litellm is not installed: its proxy/openapi.json is the schema fuzzed here")
    for location in spec.submodule_search_locations:
        path = Path(location) / "proxy" / "openapi.json"
        if path.is_file():
            document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return document
    pytest.skip("this litellm ships no proxy/openapi.json: it is the schema fuzzed here")


@pytest.fixture(scope="module")
def schema() -> Any:
    document = copy.deepcopy(_litellm_schema())
    answer = document["paths"]["/chat/completions"]["post"]["responses"]["200"]
    # LiteLLM's document types `created` a string; OpenAI's API (and every server behind the
    # proxy) answers the Unix time as an integer
    answer["content"]["application/json"]["schema"]["properties"]["created"] = {"type": "integer"}
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ScriptedServer(lambda text: f"Answer to: {text}", model_id=MODEL) as upstream:
        config = ProxyConfig(upstream=upstream.url + "/v1", upstream_api_key="sk-upstream")
        optimizer = BPOOptimizer(CallableBackend(lambda p: p + " In detail."), cache_size=0)
        with serve_in_thread(create_app(config, optimizer)) as base_url:
            yield base_url + "/v1"  # the schema's /chat/completions is the proxy's /v1/...


def _fuzz(url: str, operation: Any, mode: GenerationMode, examples: int) -> None:
    # LiteLLM's document lists 200 and 500 only: the 404 (unknown model) and 422 (no user
    # message, empty messages) that OpenAI-compatible servers answer are not in it
    excluded = [status_code_conformance]
    # it requires no field, so it allows bodies every OpenAI-compatible server refuses (no
    # `messages`, no user message, a model it does not serve)
    excluded.append(positive_data_acceptance)
    # the proxy passes every field it does not rewrite on to the upstream untouched, by design;
    # the upstream validates only what it reads, so an ill-typed `user` or `logit_bias` is answered
    excluded.append(negative_data_rejection)

    @fuzz_settings(examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
            _aim_at_the_rewrite(case.body)
        response = case.call(base_url=url, timeout=30)  # a hang fails the test
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            _assert_clean_stream(response.text)
            # the document describes the plain JSON answer only, not a stream's events
            stream_excluded = [*excluded, content_type_conformance, response_schema_conformance]
            case.validate_response(response, excluded_checks=stream_excluded)
        else:
            case.validate_response(response, excluded_checks=excluded)

    run()


def _aim_at_the_rewrite(body: dict[str, Any]) -> None:
    """Any model, role and message list is valid, but the upstream serves one model and answers
    a user message, which the proxy rewrites: with those, valid requests reach the optimizer and
    the upstream's answer instead of stopping at a 404 or 422; every other field stays fuzzed."""
    body["model"] = MODEL
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        messages = body["messages"] = [{}]
    if isinstance(messages[-1], dict):
        messages[-1]["role"] = "user"
        if not isinstance(messages[-1].get("content"), str):
            messages[-1]["content"] = "Why is the sky blue?"


def _assert_clean_stream(text: str) -> None:
    payloads = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert payloads, "an event stream without events"
    assert payloads[-1] == "[DONE]", payloads[-1]
    for payload in payloads[:-1]:
        assert "error" not in json.loads(payload), payload


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_chat_completions_survives_fuzzing(url: str, schema: Any, mode: GenerationMode) -> None:
    _fuzz(url, schema["/chat/completions"]["POST"], mode, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_chat_completions_survives_long_fuzzing(
    url: str, schema: Any, mode: GenerationMode
) -> None:
    _fuzz(url, schema["/chat/completions"]["POST"], mode, 200)


def test_models_survives_fuzzing(url: str, schema: Any) -> None:
    _fuzz(url, schema["/models"]["GET"], GenerationMode.POSITIVE, 3)


@pytest.mark.parametrize(
    ("raw", "status", "problem"),
    [
        (b'{"model": "\xd0\xd0"}', 422, "Failed to deserialize"),
        (b'{"model": {"a": 1}, "messages": []}', 404, "does not exist"),
        (
            b'{"model": "scripted-bpo", "max_tokens": "8", "messages": ' + _USER + b"}",
            422,
            "max_tokens",
        ),
        (b'{"model": "scripted-bpo", "stop": [1.5], "messages": ' + _USER + b"}", 422, "stop"),
    ],
    ids=["not-utf-8", "object-model", "string-max-tokens", "number-stop"],
)
def test_what_the_fuzzer_found_is_refused_not_a_server_error(
    url: str, raw: bytes, status: int, problem: str
) -> None:
    """The scripted upstream once hung up on a body that is not UTF-8 (the proxy's 502) and
    failed on an object for a model name, a string budget, numbers for stops (a 500)."""
    response = httpx.post(
        url + "/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert problem in response.text
