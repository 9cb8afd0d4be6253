"""``bpo serve`` holds bounded state: bodies, prompts and tokenizer output stay under its limits.

``/health`` during large requests (tokenizing runs off the event loop) is a figure of the soak
benchmark (``python -m benchmarks --only soak``), not a timed test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx

from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread

MAX_BODY = 2 * 1024 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(
        model=str(tiny_llama_dir),
        max_input_tokens=32,
        max_total_tokens=48,
        max_new_tokens=4,
        max_body_bytes=MAX_BODY,
    )
    with serve_in_thread(build_app(config)) as base_url:
        yield base_url


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error_type"] == "payload_too_large"
    assert f"the limit is {MAX_BODY} bytes" in body["error"]
    assert "--max-body-bytes" in body["error"]


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/tokenize", "/v1/completions"])
def test_a_body_over_the_limit_is_refused_before_it_is_read(url: str, path: str) -> None:
    body = {"inputs": "x" * MAX_BODY, "prompt": "x"}
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    _assert_too_large(response)
    assert f"given {len(response.request.content)} bytes" in response.json()["error"]


def test_a_chunked_body_is_counted_as_it_arrives(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(
        f"{url}/generate",
        content=chunks(),  # no Content-Length: sent chunked
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert "content-length" not in response.request.headers
    _assert_too_large(response)
    # a body under the limit still gets through on a fresh connection
    ok = httpx.post(
        f"{url}/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, timeout=60
    )
    assert ok.status_code == 200, ok.text


def test_tokenize_refuses_more_tokens_than_the_model_takes(url: str) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 8  # about 60 tokens
    response = httpx.post(f"{url}/tokenize", json={"inputs": long}, timeout=30)
    assert response.status_code == 422, response.text
    assert "must have less than 32 tokens" in response.json()["error"]
    short = httpx.post(f"{url}/tokenize", json={"inputs": "Hello world"}, timeout=30)
    assert short.status_code == 200 and short.json()[-1]["stop"] == len("Hello world")


@pytest.mark.parametrize(
    "text",
    [
        "\U0009b8fb\u0091\u00c0V\u00be",  # found by schemathesis: offsets ran to 17 of 5
        "\U000f0000\u0091\u00c0V\u00be",  # the same with an assigned (private-use) code point
    ],
)
def test_tokenize_offsets_stay_inside_text_the_tokenizer_does_not_know(url: str, text: str) -> None:
    response = httpx.post(f"{url}/tokenize", json={"inputs": text}, timeout=30)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert all(0 <= t["start"] <= t["stop"] <= len(text) for t in tokens), tokens
    assert all(t["text"] == text[t["start"] : t["stop"]] for t in tokens)
    assert [t["start"] for t in tokens] == sorted(t["start"] for t in tokens)


def test_a_text_that_cannot_fit_is_refused_before_it_is_tokenized(url: str) -> None:
    huge = "word " * 200_000  # 1 MB: tokenizing it would hold the GIL for the whole server
    for path, body in [
        ("/tokenize", {"inputs": huge}),
        ("/generate", {"inputs": huge}),
        ("/v1/completions", {"model": "bpo", "prompt": huge, "max_tokens": 2}),
    ]:
        response = httpx.post(f"{url}{path}", json=body, timeout=30)
        assert response.status_code == 422, response.text
        message = response.json().get("error") or response.json()["error"]["message"]
        assert "must have less than 32 tokens. Given: at least" in message
        assert f"({len(huge)} bytes)" in message


def test_truncate_of_a_huge_text_keeps_the_same_last_tokens(url: str) -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "

    def prefill(text: str) -> list[int]:
        parameters = {
            "truncate": 8,
            "max_new_tokens": 1,
            "details": True,
            "decoder_input_details": True,
        }
        response = httpx.post(
            f"{url}/generate", json={"inputs": text, "parameters": parameters}, timeout=60
        )
        assert response.status_code == 200, response.text
        return [token["id"] for token in response.json()["details"]["prefill"]]

    whole = [t["id"] for t in httpx.post(f"{url}/tokenize", json={"inputs": sentence * 2}).json()]
    assert prefill(sentence * 20_000) == prefill(sentence * 2) == whole[-8:]
