"""Real OpenAI clients (openai sync/async/streaming, LangChain's ChatOpenAI, LlamaIndex's
OpenAILike) against a real ``bpo proxy`` whose upstream is the scripted OpenAI-compatible server:
the upstream gets the rewrite and every other field unchanged, streams arrive as they are made."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.proxy import ProxyConfig, create_app, serve_in_thread
from bpo_integrations.testing.servers import Fault, ScriptedServer

SUFFIX = " Explain step by step."
MODEL = "scripted-bpo"
PROXY_KEY = "sk-proxy-key"
UPSTREAM_KEY = "sk-upstream-secret-1234"


def rewrite(prompt: str) -> str:
    return prompt + SUFFIX


class Stack:
    """A scripted upstream and a proxy in front of it, both on real sockets."""

    def __init__(self, upstream: ScriptedServer, url: str) -> None:
        self.upstream = upstream
        self.url = url

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=PROXY_KEY, max_retries=0, **options)

    def last(self) -> dict[str, Any]:
        return self.upstream.requests[-1][1]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with ScriptedServer(lambda text: f"Answer to: {text}", model_id=MODEL) as upstream:
        config = ProxyConfig(
            upstream=upstream.url + "/v1",
            api_key=PROXY_KEY,
            upstream_api_key=UPSTREAM_KEY,
            skip_models=("skip-*",),
        )
        optimizer = BPOOptimizer(CallableBackend(rewrite), cache_size=0)
        with serve_in_thread(create_app(config, optimizer)) as url:
            yield Stack(upstream, url)


def test_openai_sync_client_gets_the_answer_to_the_rewrite(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}]
    )
    answer = raw.parse().choices[0].message.content
    assert answer == "Answer to: Why is the sky blue?" + SUFFIX
    assert stack.last()["messages"] == [
        {"role": "user", "content": "Why is the sky blue?" + SUFFIX}
    ]
    assert raw.headers["x-bpo-optimized"] == "true"
    assert unquote(raw.headers["x-bpo-rewrite"]) == "Why is the sky blue?" + SUFFIX
    body = json.loads(raw.text)  # the upstream's body as it was: nothing of BPO in it
    assert set(body) == {
        "id",
        "created",
        "model",
        "system_fingerprint",
        "object",
        "choices",
        "usage",
    }
    assert set(body["choices"][0]) == {"index", "message", "finish_reason", "logprobs"}
    sent = stack.upstream.request_headers[-1]
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the proxy key stays behind


async def test_openai_async_client_and_its_stream(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=PROXY_KEY, max_retries=0)
    async with client:
        done = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a colour"}]
        )
        assert done.choices[0].message.content == "Answer to: Name a colour" + SUFFIX
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a fruit"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(p or "" for p in pieces) == "Answer to: Name a fruit" + SUFFIX
    assert len(pieces) > 3  # chunk by chunk, as the upstream sent them


def test_fields_other_than_the_prompt_reach_the_upstream_unchanged(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
    }
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": [image, {"type": "text", "text": "And in this city?"}]},
    ]
    stack.client().chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=tools,
        tool_choice="auto",
        n=2,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        temperature=0.3,
        seed=7,
        extra_body={"vendor_option": {"keep": [1, 2.5, None]}},
    )
    sent = stack.last()
    assert sent["messages"][:5] == messages[:5]
    assert sent["messages"][5]["content"] == [
        image,
        {"type": "text", "text": "And in this city?" + SUFFIX},
    ]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto" and sent["n"] == 2
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["logprobs"], sent["top_logprobs"], sent["seed"]) == (True, 2, 7)
    assert sent["vendor_option"] == {"keep": [1, 2.5, None]}


def test_only_the_prompts_bytes_change(stack: Stack) -> None:
    raw = (
        b'{"model": "scripted-bpo",\n "messages": [{"role": "system", "content": "Caf\\u00e9 \\ud83d\\ude00"},'
        b' {"role":"user","content":"first turn"}, {"role": "assistant", "content": "ok"},\n'
        b'  {"role": "user", "content": "second turn"}], "temperature": 1E-1, "top_p": 0.90}'
    )
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {PROXY_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    expected = raw.replace(b'"second turn"', json.dumps("second turn" + SUFFIX).encode())
    assert stack.upstream.raw_bodies[-1] == expected


def test_opt_out_header_and_skipped_models_go_through_byte_for_byte(stack: Stack) -> None:
    raw = b'{"model": "scripted-bpo", "messages": [{"role": "user", "content": "as is"}]}'
    headers = {"Authorization": f"Bearer {PROXY_KEY}", "X-BPO": "off"}
    response = httpx.post(stack.url + "/v1/chat/completions", content=raw, headers=headers)
    assert stack.upstream.raw_bodies[-1] == raw
    assert response.headers["x-bpo-optimized"] == "false"
    assert response.headers["x-bpo-skipped"] == "opt_out"
    assert "x-bpo" not in stack.upstream.request_headers[-1]  # the proxy's own header stays
    raw = raw.replace(b"scripted-bpo", b"skip-this-model")
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    skipped = httpx.post(stack.url + "/v1/chat/completions", content=raw, headers=headers)
    assert stack.upstream.raw_bodies[-1] == raw
    assert skipped.headers["x-bpo-skipped"] == "model"
    assert skipped.status_code == 404  # the upstream's own answer: it serves no such model
    assert skipped.json()["error"].startswith("The model `skip-this-model` does not exist")


def test_text_completions_and_models(stack: Stack) -> None:
    client = stack.client()
    done = client.completions.create(model=MODEL, prompt="Tell me a joke", max_tokens=50)
    assert done.choices[0].text == "Answer to: Tell me a joke" + SUFFIX
    assert stack.last()["prompt"] == "Tell me a joke" + SUFFIX
    streamed = client.completions.create(model=MODEL, prompt="Count", max_tokens=50, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "Answer to: Count" + SUFFIX
    assert [m.id for m in client.models.list()] == [MODEL]
    assert stack.upstream.paths()[-1] == "/v1/models"


def test_streaming_is_relayed_before_the_upstream_finishes(stack: Stack) -> None:
    stack.upstream.inject(Fault("stall", seconds=60))
    stream = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream it"}], stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.content == "Answer"
    assert stack.upstream.stalled == 1  # the upstream is still holding the rest
    threading.Timer(0.1, stack.upstream.release).start()
    rest = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Answer" + rest == "Answer to: Stream it" + SUFFIX


def test_the_proxy_key_is_required(stack: Stack) -> None:
    wrong = openai.OpenAI(base_url=stack.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        wrong.models.list()
    assert "--api-key" in str(error.value)
    assert httpx.get(stack.url + "/health").json() == {"status": "ok"}
    assert httpx.get(stack.url + "/metrics").status_code == 401
    metrics = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {PROXY_KEY}"})
    assert 'bpo_proxy_optimizations_total{outcome="optimized",reason=""}' in metrics.text
    assert 'bpo_proxy_requests_total{route="/v1/chat/completions",status="200"}' in metrics.text


def test_langchain_chat_openai(stack: Stack) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def weather(city: str) -> str:
        """The weather of a city."""
        return "sunny"

    llm = ChatOpenAI(model=MODEL, base_url=stack.url + "/v1", api_key=PROXY_KEY, max_retries=0)
    answer = llm.invoke([SystemMessage("Be brief."), HumanMessage("Why do cats purr?")])
    assert answer.content == "Answer to: Why do cats purr?" + SUFFIX
    assert stack.last()["messages"][0] == {"role": "system", "content": "Be brief."}
    streamed = "".join(chunk.content for chunk in llm.stream("Why do dogs bark?"))
    assert streamed == "Answer to: Why do dogs bark?" + SUFFIX
    llm.bind_tools([weather]).invoke("Weather in Rome?")
    sent = stack.last()
    assert sent["tools"][0]["function"]["name"] == "weather"
    assert sent["messages"][-1]["content"] == "Weather in Rome?" + SUFFIX


async def test_llama_index_openai_like_chat_and_complete(stack: Stack) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    chat_llm = OpenAILike(
        model=MODEL,
        api_base=stack.url + "/v1",
        api_key=PROXY_KEY,
        is_chat_model=True,
        max_retries=0,
    )
    reply = chat_llm.chat([ChatMessage(role="user", content="What is BPO?")])
    assert reply.message.content == "Answer to: What is BPO?" + SUFFIX
    stream = await chat_llm.astream_chat([ChatMessage(role="user", content="And LlamaIndex?")])
    deltas = [chunk.delta async for chunk in stream]
    assert "".join(d or "" for d in deltas) == "Answer to: And LlamaIndex?" + SUFFIX
    text_llm = OpenAILike(
        model=MODEL,
        api_base=stack.url + "/v1",
        api_key=PROXY_KEY,
        is_chat_model=False,
        max_tokens=64,
        max_retries=0,
    )
    assert text_llm.complete("Define recursion").text == "Answer to: Define recursion" + SUFFIX
    assert stack.upstream.paths()[-1] == "/v1/completions"
