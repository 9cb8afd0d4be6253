"""Contract tests: ``bpo serve`` on a tiny llama, called by TGI's and OpenAI's real clients.

Every JSON answer and every streamed event is validated against TGI's published OpenAPI schema.
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx
import jsonschema
import openai
from huggingface_hub import InferenceClient
from transformers import AutoTokenizer

from bpo_integrations import BPOOptimizer, GenerationSettings
from bpo_integrations.backends.openai import OpenAIBackend
from bpo_integrations.backends.tgi import TGIBackend
from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread
from bpo_integrations.template import format_bpo_prompt
from bpo_integrations.testing.openapi import component, validator
from bpo_integrations.testing.servers import hf_inference_online

pytestmark = pytest.mark.shared_data

PROMPT = "Tell me about Harry Potter"
NEW_TOKENS = 8
Validate = Callable[[str, Any], None]


@pytest.fixture(scope="module")
def conforms(tgi_openapi: dict[str, Any]) -> Validate:
    """``conforms("GenerateResponse", body)`` raises unless ``body`` fits TGI's schema."""

    def validate(name: str, instance: Any) -> None:
        validator(tgi_openapi, component(name)).validate(instance)

    return validate


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(
        model=str(tiny_llama_dir),
        served_model_name="tiny-bpo",
        max_input_tokens=256,
        max_total_tokens=320,
        max_new_tokens=16,
    )
    with serve_in_thread(build_app(config)) as base_url, hf_inference_online():
        yield base_url


def _events(response: httpx.Response) -> list[Any]:
    payloads = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def _greedy(url: str, inputs: str, **parameters: Any) -> dict[str, Any]:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": NEW_TOKENS, "details": True}}
    body["parameters"].update(parameters)
    response = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# -- TGI routes ------------------------------------------------------------------------------------


def test_generate_answers_tgi_shapes_and_the_hf_client_parses_them(
    url: str, conforms: Validate
) -> None:
    raw = _greedy(url, PROMPT)
    conforms("GenerateResponse", raw)
    details = raw["details"]
    assert details["generated_tokens"] == len(details["tokens"]) == NEW_TOKENS
    assert details["finish_reason"] == "length"
    assert "".join(t["text"] for t in details["tokens"]) == raw["generated_text"]

    output = InferenceClient(url).text_generation(PROMPT, max_new_tokens=NEW_TOKENS, details=True)
    assert output.generated_text == raw["generated_text"]  # greedy: same text every time
    assert output.details.finish_reason == "length"
    assert [t.id for t in output.details.tokens] == [t["id"] for t in details["tokens"]]


def test_generate_stream_sends_token_events_that_add_up_to_the_text(
    url: str, conforms: Validate
) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS}}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    for event in events:
        conforms("StreamResponse", event)
    assert len(events) == NEW_TOKENS
    assert all(e["generated_text"] is None for e in events[:-1])
    final = events[-1]
    assert final["details"]["generated_tokens"] == NEW_TOKENS
    assert final["details"]["input_length"] > 0
    assert "".join(e["token"]["text"] for e in events) == final["generated_text"]
    # the streamed path and the batched path decode greedily to the same text
    assert final["generated_text"] == _greedy(url, PROMPT)["generated_text"]

    client = InferenceClient(url)
    pieces = list(client.text_generation(PROMPT, max_new_tokens=NEW_TOKENS, stream=True))
    assert "".join(pieces) == final["generated_text"]


def test_compat_route_serves_generate_and_generate_stream(url: str, conforms: Validate) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}
    plain = httpx.post(f"{url}/", json=body, timeout=60)
    assert plain.status_code == 200
    jsonschema.validate(plain.json(), {"type": "array", "minItems": 1, "maxItems": 1})
    conforms("GenerateResponse", plain.json()[0])
    with httpx.stream("POST", f"{url}/", json={**body, "stream": True}, timeout=60) as streamed:
        events = _events(streamed)
    assert [e["index"] for e in events] == [1, 2, 3, 4]
    assert events[-1]["generated_text"] == plain.json()[0]["generated_text"]


def test_sampling_knobs_and_token_details(url: str, conforms: Validate) -> None:
    raw = _greedy(
        url,
        PROMPT,
        decoder_input_details=True,
        repetition_penalty=1.2,
        return_full_text=True,
    )
    conforms("GenerateResponse", raw)
    details = raw["details"]
    assert raw["generated_text"].startswith(PROMPT)
    assert "".join(t["text"] for t in details["prefill"]) == PROMPT
    assert len(details["tokens"]) == NEW_TOKENS
    assert all(token["logprob"] <= 0 for token in details["tokens"])
    sampled = [
        _greedy(url, PROMPT, do_sample=True, temperature=1.5, top_k=50, seed=seed)["details"]
        for seed in (1, 1, 2)
    ]
    assert sampled[0]["tokens"] == sampled[1]["tokens"] != sampled[2]["tokens"]
    assert sampled[0]["seed"] == 1


def test_stop_sequences_end_generation_as_tgi_does(url: str) -> None:
    text = _greedy(url, PROMPT, max_new_tokens=12)["generated_text"]
    stop = text[4:7]
    assert stop and stop not in text[:4]
    for stream in (False, True):
        parameters = {"max_new_tokens": 12, "details": True, "stop": [stop]}
        if stream:
            with httpx.stream(
                "POST",
                f"{url}/generate_stream",
                json={"inputs": PROMPT, "parameters": parameters},
                timeout=60,
            ) as response:
                final = _events(response)[-1]
        else:
            final = _greedy(url, PROMPT, **parameters)
        assert final["details"]["finish_reason"] == "stop_sequence"
        assert final["generated_text"] == text[: text.index(stop) + len(stop)]


def test_tokenize_info_health_and_metrics(
    url: str, conforms: Validate, tiny_llama_dir: Path
) -> None:
    tokens = httpx.post(f"{url}/tokenize", json={"inputs": PROMPT}, timeout=30).json()
    conforms("TokenizeResponse", tokens)
    assert [t["id"] for t in tokens] == AutoTokenizer.from_pretrained(tiny_llama_dir)(
        PROMPT, add_special_tokens=False
    ).input_ids
    assert "".join(PROMPT[t["start"] : t["stop"]] for t in tokens) == PROMPT

    info = httpx.get(f"{url}/info", timeout=30).json()
    conforms("Info", info)
    assert (info["model_id"], info["max_input_tokens"], info["max_total_tokens"]) == (
        "tiny-bpo",
        256,
        320,
    )
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200

    _greedy(url, PROMPT)
    metrics = httpx.get(f"{url}/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        'bpo_serve_requests_total{route="/generate",status="200"}',
        "bpo_serve_queue_size",
        "bpo_serve_engine_steps_total",
        "bpo_serve_engine_requests_total",
        "bpo_serve_generated_tokens_bucket",
        "bpo_serve_input_tokens_bucket",
        "bpo_serve_request_duration_seconds_bucket",
    ):
        assert name in text, name
    generated = [
        line for line in text.splitlines() if line.startswith("bpo_serve_generated_tokens_sum")
    ]
    assert float(generated[0].split()[-1]) >= NEW_TOKENS


# -- OpenAI routes ---------------------------------------------------------------------------------


def test_chat_completion_applies_the_chat_template(
    url: str, conforms: Validate, tiny_llama_dir: Path
) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    raw = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": messages, "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    conforms("ChatCompletion", raw)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated.startswith("<|im_start|>")  # the tiny model's (SmolLM2's) chat template
    ids = tokenizer(templated, add_special_tokens=False).input_ids
    assert raw["usage"]["prompt_tokens"] == len(ids)
    assert raw["usage"]["completion_tokens"] == 6
    # the chat route is /generate on the templated prompt
    same = _greedy(url, templated, max_new_tokens=6)["generated_text"]
    assert raw["choices"][0]["message"] == {"role": "assistant", "content": same}

    output = InferenceClient(url).chat_completion(messages, max_tokens=6, temperature=0)
    assert output.choices[0].message.content == same

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    with_logprobs = client.chat.completions.create(
        model="tiny-bpo", messages=messages, max_tokens=6, temperature=0, logprobs=True,
    )  # fmt: skip
    conforms("ChatCompletion", with_logprobs.model_dump(mode="json", exclude_unset=True))
    choice = with_logprobs.choices[0]
    assert choice.message.content == same  # the token path decodes as the batched path
    assert "".join(t.token for t in choice.logprobs.content) == same
    assert all(token.logprob <= 0 for token in choice.logprobs.content)


def test_chat_stream_with_hf_and_openai_clients(url: str, conforms: Validate) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    body = {
        "messages": messages,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        events = _events(response)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        conforms("ChatCompletionChunk", event)
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 6
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(e["choices"][0]["delta"]["content"] for e in events[:-2])

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    plain = client.chat.completions.create(
        model="tiny-bpo", messages=messages, max_tokens=6, temperature=0
    )
    assert plain.choices[0].message.content == streamed
    chunks = client.chat.completions.create(
        model="tiny-bpo", messages=messages, max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed

    hf_client = InferenceClient(url)  # keep it: its streams close with it
    hf_chunks = hf_client.chat_completion(messages, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in hf_chunks if c.choices) == streamed


def test_openai_completions_and_models(url: str, conforms: Validate) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-bpo"]
    conforms("ModelInfo", httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0])

    prompts = [PROMPT, "Give two specific examples"]
    completion = client.completions.create(
        model="tiny-bpo", prompt=prompts, max_tokens=5, temperature=0
    )
    assert [c.index for c in completion.choices] == [0, 1]
    for choice, prompt in zip(completion.choices, prompts, strict=True):
        assert choice.text == _greedy(url, prompt, max_new_tokens=5)["generated_text"]
    raw = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0},
        timeout=60,
    ).json()
    conforms("CompletionFinal", raw)


# -- this project's backends -----------------------------------------------------------------------


def test_the_projects_tgi_and_openai_backends_work_unchanged(url: str) -> None:
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=NEW_TOKENS)
    expected = _greedy(url, format_bpo_prompt(PROMPT))["generated_text"]

    (generation,) = TGIBackend(url, timeout=60).generate([PROMPT], settings)
    assert generation.text == expected
    assert generation.finish_reason == "length"
    assert generation.generated_tokens == NEW_TOKENS

    backend = OpenAIBackend("tiny-bpo", base_url=f"{url}/v1", timeout=60)
    (chat_generation,) = backend.generate([PROMPT], settings)
    assert chat_generation.finish_reason == "length"
    assert chat_generation.text

    result = BPOOptimizer(TGIBackend(url), settings=settings, timeout=60).optimize(PROMPT)
    assert result.backend == "tgi"
    assert not (result.fallback_reason or "").startswith(("backend_", "timeout"))


def test_the_tgi_example_chain_runs_against_bpo_serve(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("langchain_core")
    example = Path(__file__).resolve().parents[2] / "examples" / "tgi" / "chain.py"
    chain = runpy.run_path(str(example), run_name="example_chain")
    assert chain["main"](endpoint=url, max_new_tokens=8) == 0
    output = capsys.readouterr().out
    assert output.count("question:") == output.count("answer:") == len(chain["QUESTIONS"])
    assert "did not answer" not in output


def test_stream_events_carry_tgi_and_openai_shapes(url: str, conforms: Validate) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletionChunk

    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as response:
        tgi_events = _events(response)
    for event in tgi_events:
        assert {"index", "token"} <= set(event)  # the schema's required fields
        conforms("StreamResponse", event)
    assert [e["index"] for e in tgi_events] == [1, 2, 3, 4]

    chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat, timeout=60) as response:
        chat_events = _events(response)
    assert chat_events[-1] == "[DONE]"
    for event in chat_events[:-1]:
        chunk = ChatCompletionChunk.model_validate(event)  # OpenAI's own types, validated
        assert chunk.object == "chat.completion.chunk" and chunk.choices[0].index == 0
    assert [e["choices"][0]["finish_reason"] for e in chat_events[:-1]][-1] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in chat_events[:-2])

    legacy = {"prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=legacy, timeout=60) as response:
        legacy_events = _events(response)
    assert legacy_events[-1] == "[DONE]"
    *running, last = legacy_events[:-1]
    # OpenAI's chunks say null until the last one, which says why the text ended
    assert [e["choices"][0]["finish_reason"] for e in running] == [None] * len(running)
    assert Completion.model_validate(last).choices[0].finish_reason == "length"
    for event in running:
        assert (
            Completion.model_validate(
                {**event, "choices": [{**event["choices"][0], "finish_reason": "stop"}]}
            ).object
            == "text_completion"
        )
