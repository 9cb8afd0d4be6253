"""Property-based fuzzing of ``bpo serve`` from TGI's OpenAPI schema, with schemathesis.

Valid and invalid requests for every route: no answer may be a server error, none may hang, and
every documented answer must match TGI's schema. Examples are bounded and derandomized, so the
run is short and the same in CI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")
schemathesis = pytest.importorskip("schemathesis")

from fuzzing import fuzz_settings  # noqa: E402
from hypothesis import given  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from bpo_integrations.serve import ServeConfig  # noqa: E402
from bpo_integrations.serve.server import build_app, serve_in_thread  # noqa: E402
from bpo_integrations.testing.openapi import as_openapi_30  # noqa: E402

pytestmark = pytest.mark.shared_data

POSTS = [
    "/generate",
    "/generate_stream",
    "/",
    "/tokenize",
    "/v1/chat/completions",
    "/v1/completions",
]
GETS = ["/info", "/health", "/metrics", "/v1/models"]
EXAMPLES = 12


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    # small limits keep every generation short: at most 32 tokens in all
    config = ServeConfig(
        model=str(tiny_llama_dir), max_input_tokens=24, max_total_tokens=32, max_new_tokens=8
    )
    with serve_in_thread(build_app(config)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def schema(tgi_openapi: dict[str, Any]) -> Any:
    spec = as_openapi_30(tgi_openapi)
    # The /v1 routes also take OpenAI's form of `prompt` and `stop`, one string, where TGI's schema
    # names only a list: OpenAI clients send either, so a string is not schema-violating here.
    schemas = spec["components"]["schemas"]
    widened = [
        ("CompletionRequest", "prompt"),
        ("CompletionRequest", "stop"),
        ("ChatRequest", "stop"),
    ]
    for name, field in widened:
        properties = schemas[name]["properties"]
        properties[field] = {"anyOf": [{"type": "string"}, properties[field]]}
    return schemathesis.openapi.from_dict(spec)


def _fuzz(url: str, operation: Any, mode: GenerationMode, examples: int) -> None:
    # every check schemathesis has (its default set), but where TGI's schema cannot be checked:
    # TGI's real /v1/models answers a list of ModelInfo (its schema names only the item), and a
    # stream's schema means each event's payload, which schemathesis would read as the envelope
    excluded = [response_schema_conformance] if operation.path == "/v1/models" else []
    # TGI's own validation refuses requests its schema allows (empty inputs, budgets over the
    # token limits, unsupported features): a 422 naming the field, by design
    excluded.append(positive_data_acceptance)
    if operation.path == "/tokenize":  # TGI's schema lists 200 and 404 only; TGI answers 422 too
        excluded.append(status_code_conformance)
        # it reads `inputs` only, as TGI's does: `parameters` the schema forbids are not refused
        excluded.append(negative_data_rejection)

    @fuzz_settings(examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=30)  # a hang fails the test
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            stream_excluded = [*excluded, response_schema_conformance]
            if _assert_clean_stream(response.text):  # refused in the stream, as TGI refuses
                stream_excluded.append(negative_data_rejection)
            case.validate_response(response, excluded_checks=stream_excluded)
        else:
            case.validate_response(response, excluded_checks=excluded)

    run()


def _assert_clean_stream(text: str) -> bool:
    """Every event is JSON (or ``[DONE]``); none reports an error but a refused request's only one
    (TGI's in-stream validation error)."""
    payloads = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert payloads, "an event stream without events"
    if len(payloads) == 1 and json.loads(payloads[0]).get("error_type") in (
        "validation",
        "overloaded",
    ):
        return True
    for payload in payloads:
        if payload != "[DONE]":
            event = json.loads(payload)
            assert "error" not in event, event
    return False


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", POSTS)
def test_post_routes_survive_fuzzing(
    url: str, schema: Any, path: str, mode: GenerationMode
) -> None:
    _fuzz(url, schema[path]["POST"], mode, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", POSTS)
def test_post_routes_survive_long_fuzzing(
    url: str, schema: Any, path: str, mode: GenerationMode
) -> None:
    _fuzz(url, schema[path]["POST"], mode, 200)


@pytest.mark.parametrize("path", GETS)
def test_get_routes_survive_fuzzing(url: str, schema: Any, path: str) -> None:
    _fuzz(url, schema[path]["GET"], GenerationMode.POSITIVE, 3)
