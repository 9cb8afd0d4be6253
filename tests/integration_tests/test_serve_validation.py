"""``bpo serve`` rejects what TGI rejects, with TGI's error shapes, guards its key, sheds load,
and frees the slot of a client that leaves."""

from __future__ import annotations

import gc
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx
import openai
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError, ValidationError

from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread
from bpo_integrations.testing.servers import hf_inference_online

KEY = "sekrit-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = "The quick brown fox jumps over the lazy dog. " * 8  # about 60 tiny-llama tokens


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(
        model=str(tiny_llama_dir),
        api_key=KEY,
        max_input_tokens=32,
        max_total_tokens=48,
        max_new_tokens=8,
    )
    with serve_in_thread(build_app(config)) as base_url, hf_inference_online():
        yield base_url


def _post(url: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=60, **kwargs)


def _assert_error(response: httpx.Response, status: int, error_type: str, *words: str) -> str:
    """``status`` and TGI's ``ErrorResponse``, or on a stream TGI's in-stream error event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        # TGI's validation refuses in the stream (200); a body that is not TGI's JSON, with `status`
        assert response.status_code in (200, status), response.text
        (event,) = [line for line in response.text.splitlines() if line]
        assert event.startswith("data: ")
        body = httpx.Response(200, content=event[6:]).json()
    else:
        assert response.status_code == status, response.text
        body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type
    for word in words:
        assert word in body["error"], (word, body["error"])
    return body["error"]


# -- authentication ------------------------------------------------------------------------------


def test_api_key_is_required_everywhere_but_health(url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    missing = httpx.post(f"{url}/generate", json=body, timeout=30)
    _assert_error(missing, 401, "authentication", "missing API key", "Bearer")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{url}/info", headers={"Authorization": "Bearer nope"}, timeout=30)
    _assert_error(wrong, 401, "authentication", "wrong API key")
    for path in ("/metrics", "/v1/models"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert _post(url, "/generate", body).status_code == 200

    assert InferenceClient(url, api_key=KEY).text_generation("Hello", max_new_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope").models.list()
    models = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).models.list()
    assert len(models.data) == 1


# -- validation ----------------------------------------------------------------------------------

GENERATE_CASES = [
    ({"inputs": LONG}, "must have less than 32 tokens", "--max-input-tokens"),
    ({"inputs": "Hi", "parameters": {"max_new_tokens": 48}}, "must be <= 48", "--max-total"),
    ({"inputs": "Hi", "parameters": {"max_new_tokens": 0}}, "strictly positive"),
    ({"inputs": "Hi", "parameters": {"max_new_tokens": "5"}}, "max_new_tokens", "integer"),
    ({"inputs": "Hi", "parameters": {"temperature": 0}}, "temperature", "greater than 0"),
    ({"inputs": "Hi", "parameters": {"top_p": 1.5}}, "top_p"),
    ({"inputs": "Hi", "parameters": {"top_k": 0}}, "top_k"),
    ({"inputs": "Hi", "parameters": {"repetition_penalty": -1.0}}, "repetition_penalty"),
    ({"inputs": "Hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "up to 4 stop"),
    ({"inputs": "Hi", "parameters": {"stop": [""]}}, "empty"),
    ({"inputs": "Hi", "parameters": {"best_of": 2}}, "best_of"),
    ({"inputs": "Hi", "parameters": {"watermark": True}}, "watermark"),
    ({"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "a+"}}}, "grammar"),
    ({"inputs": "Hi", "parameters": {"top_n_tokens": 2}}, "top_n_tokens", "not supported"),
    ({"inputs": "Hi", "parameters": {"typical_p": 0.5}}, "typical_p", "not supported"),
    ({"inputs": "Hi", "parameters": {"typical_p": 0}}, "parameters.typical_p", "greater than 0"),
    ({"inputs": "Hi", "parameters": {"typical_p": 1.5}}, "parameters.typical_p", "less than"),
    ({"inputs": "Hi", "parameters": {"top_p": 0}}, "parameters.top_p", "greater than 0"),
    ({"inputs": "Hi", "parameters": {"top_k": -1}}, "parameters.top_k"),
    ({"inputs": "Hi", "parameters": {"frequency_penalty": -2}}, "parameters.frequency_penalty"),
    ({"inputs": "Hi", "parameters": {"frequency_penalty": 2.5}}, "parameters.frequency_penalty"),
    ({"inputs": "Hi", "parameters": {"seed": -1}}, "parameters.seed"),
    ({"inputs": "Hi", "parameters": {"seed": 2**64}}, "parameters.seed"),
    ({"inputs": "Hi", "parameters": {"truncate": 0}}, "truncate"),
    ({"inputs": "Hi", "parameters": {"adapter_id": "other/lora"}}, "--adapter"),
    ({"inputs": ""}, "cannot be empty"),
    ({"parameters": {}}, "inputs", "Field required"),
    ([1, 2, 3], "JSON object"),
]


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
@pytest.mark.parametrize(("body", "words"), [(c[0], c[1:]) for c in GENERATE_CASES])
def test_bad_generate_requests_get_tgi_validation_errors(
    url: str, path: str, body: Any, words: tuple[str, ...]
) -> None:
    _assert_error(_post(url, path, body), 422, "validation", "Input validation error", *words)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b'{"inputs": "Hi", ', "malformed JSON"), (b'{"inputs": "\xff\xfe"}', "malformed body")],
)
def test_malformed_json_is_a_validation_error(url: str, content: bytes, words: str) -> None:
    response = httpx.post(
        f"{url}/generate",
        content=content,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    _assert_error(response, 422, "validation", words)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": []}, ("`messages` cannot be empty",)),
        ({"messages": [{"role": "user", "content": "Hi"}], "n": 2}, ("`n` must be 1",)),
        ({"messages": [{"role": "user", "content": LONG}]}, ("less than 32 tokens",)),
        ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}, ("max_tokens",)),
        (
            {"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]},
            ("`tools`",),
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            ("text-only",),
        ),
        ({"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}, ("temperature",)),
    ],
)
def test_bad_chat_requests_get_validation_errors(
    url: str, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    _assert_error(_post(url, "/v1/chat/completions", body), 422, "validation", *words)


def test_stream_validation_errors_are_tgi_error_events(url: str) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 100}}
    response = _post(url, "/generate_stream", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    _assert_error(response, 422, "validation", "must be <= 48")
    # huggingface_hub reads the event and raises TGI's typed error, with the server's words
    client = InferenceClient(url, api_key=KEY)  # keep it: its streams close with it
    stream = client.text_generation("Hi", max_new_tokens=100, stream=True)
    with pytest.raises(ValidationError, match=r"must be <= 48\. Given: 1 `inputs` tokens"):
        list(stream)
    # a body that is not TGI's JSON is refused before any stream, as TGI's JSON extractor does
    malformed = _post(url, "/generate_stream", {"inputs": 5})
    assert malformed.status_code == 422
    assert malformed.headers["content-type"].startswith("text/event-stream")  # as TGI's schema
    _assert_error(malformed, 422, "validation", "inputs: Input should be a valid string")


def test_clients_raise_their_validation_errors(url: str) -> None:
    client = InferenceClient(url, api_key=KEY)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.text_generation("Hi", max_new_tokens=100)
    with pytest.raises(ValidationError, match="less than 32 tokens"):
        list(client.text_generation(LONG, max_new_tokens=2, stream=True))
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).completions.create(
            model="any", prompt=["Hi"] * 17, max_tokens=2
        )
    assert "split them over several requests" in str(raised.value.body)


def test_default_budget_fits_the_total_and_truncate_keeps_the_end(url: str) -> None:
    body = {"inputs": LONG, "parameters": {"truncate": 30, "details": True}}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        final = [line for line in r.iter_lines() if line.startswith("data:")][-1]
    details = httpx.Response(200, content=final[5:]).json()["details"]
    assert details["input_length"] == 30
    # no max_new_tokens: the default (8) shrinks to the room left (48 - 30 = 18 >= 8)
    assert details["generated_tokens"] <= 8


# -- admission control ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One request at a time, and a model slow enough that a long generation holds its slot."""
    from bpo_integrations.testing.tiny_models import build_tiny_gguf

    model = build_tiny_gguf(tmp_path_factory.mktemp("slow-llama"), hidden_size=512, layers=8)
    config = ServeConfig(
        model=str(model),
        max_queue=1,
        max_input_tokens=32,
        max_total_tokens=2000,
    )
    with serve_in_thread(build_app(config)) as base_url, hf_inference_online():
        yield base_url


def _gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def _wait_for(condition: Any, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def test_full_queue_answers_429_and_a_disconnect_frees_the_slot(
    busy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="asyncio")

    def hold_then_give_up() -> None:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}}  # seconds of work
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{busy_url}/generate", json=body, timeout=4)

    holder = threading.Thread(target=hold_then_give_up)
    holder.start()
    _wait_for(lambda: _gauge(busy_url, "bpo_serve_queue_size") == 1, timeout=10)

    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    overloaded = httpx.post(f"{busy_url}/generate", json=body, timeout=30)
    _assert_error(overloaded, 429, "overloaded", "overloaded", "--max-queue")
    assert overloaded.headers["retry-after"] == "1"
    with pytest.raises(OverloadedError):
        InferenceClient(busy_url).text_generation("Hello", max_new_tokens=2)
    client = InferenceClient(busy_url)  # keep it: its streams close with it
    with pytest.raises(OverloadedError, match="--max-queue"):
        list(client.text_generation("Hello", max_new_tokens=2, stream=True))

    holder.join()
    # the client gave up after 4 s; its generation alone would have held the slot far longer
    freed_after = _wait_for(lambda: _gauge(busy_url, "bpo_serve_queue_size") == 0, timeout=1.0)
    assert freed_after < 1.0
    streamed = httpx.post(
        f"{busy_url}/generate_stream",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}},
        timeout=30,
    )
    assert streamed.status_code == 200
    gc.collect()
    assert "never retrieved" not in caplog.text  # the cancelled generation's error was handled


def test_a_stream_whose_client_leaves_stops_generating(busy_url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1900}}  # seconds of work
    tokens = "bpo_serve_engine_generated_tokens_total"
    with httpx.stream("POST", f"{busy_url}/generate_stream", json=body, timeout=30) as response:
        lines = response.iter_lines()  # keep it: closing it would close the connection
        first = next(line for line in lines if line.startswith("data:"))
        assert '"index":1' in first
        assert _gauge(busy_url, "bpo_serve_queue_size") == 1
    stopped_after = _wait_for(lambda: _gauge(busy_url, "bpo_serve_queue_size") == 0, timeout=3.0)
    assert stopped_after < 3.0
    generated = _gauge(busy_url, tokens)
    time.sleep(0.5)
    assert _gauge(busy_url, tokens) == generated  # the engine stopped the request
    text = httpx.get(f"{busy_url}/metrics", timeout=30).text
    assert 'bpo_serve_requests_total{route="/generate_stream",status="200"}' in text


# -- values that stay finite, and a 500 that keeps the connection ------------------------------


@pytest.mark.parametrize(
    "parameters",
    [
        {"temperature": 1e-300},
        {"temperature": 1e308},
        {"repetition_penalty": 1e-300},
        {"repetition_penalty": 1e307},
        {"temperature": 1e-300, "repetition_penalty": 1e307, "top_k": 2**31 - 1},
    ],
)
def test_extreme_sampling_values_the_schema_allows_are_served(
    url: str, parameters: dict[str, Any]
) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "seed": 1, **parameters}}
    response = _post(url, "/generate", body)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["generated_text"], str)


@pytest.mark.parametrize(
    "parameters",
    [
        {"top_p": 1e-300},  # 0 in float32, which the engine refuses
        {"top_p": 5e-324},
        {"top_p": 0.9999999999},
        {"seed": 2**64 - 1},  # TGI takes any u64
        {"frequency_penalty": -1.999, "temperature": 1e-45},
    ],
)
def test_extreme_sampling_values_are_served_on_every_route(
    url: str, parameters: dict[str, Any]
) -> None:
    generate = {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "do_sample": True}}
    generate["parameters"].update(parameters)
    assert _post(url, "/generate", generate).status_code == 200
    openai_body = {"max_tokens": 2, "temperature": 1.0, **parameters}
    completion = _post(url, "/v1/completions", {"prompt": "Hello", **openai_body})
    assert completion.status_code == 200, completion.text
    messages = [{"role": "user", "content": "Hi"}]
    chat = _post(url, "/v1/chat/completions", {"messages": messages, **openai_body})
    assert chat.status_code == 200, chat.text


def test_chat_temperature_above_two_is_served_as_tgi_does(url: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 5.0}
    assert _post(url, "/v1/chat/completions", body).status_code == 200


def test_a_long_stop_sequence_is_refused_by_name(url: str) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "stop": ["x" * 20_000]}}
    _assert_error(_post(url, "/generate", body), 422, "validation", "`stop`", "20000")


def test_a_500_leaves_the_keep_alive_connection_usable(tiny_llama_dir: Path) -> None:
    config = ServeConfig(model=str(tiny_llama_dir), max_input_tokens=32, max_total_tokens=48)
    app = build_app(config)
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        assert client.get("/info").status_code == 200
        app.state.engine.model.close()  # every generation now fails inside the engine
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
        failed = client.post("/generate", json=body)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error_type"] == "internal"
        assert failed.headers.get("connection") != "close"
        again = client.get("/info")  # the same connection: it was not dropped
        assert again.status_code == 200
        assert client.post("/generate", json=body).status_code == 500
