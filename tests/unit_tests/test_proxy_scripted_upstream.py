"""What the proxy tests need from the scripted upstream: OpenAI's ``/v1/completions``, a stream
that stalls after its first event until released, and one that breaks off after it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from bpo_integrations.testing.servers import Fault, ScriptedServer

CHAT = {"model": "scripted-bpo", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture
def server():
    with ScriptedServer(lambda text: f"echo {text}") as srv:
        yield srv


def events(response: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


def test_text_completions_plain_stream_and_list(server) -> None:
    body = {"model": "scripted-bpo", "prompt": "Tell me", "max_tokens": 2}
    data = httpx.post(server.url + "/v1/completions", json=body).json()
    assert data["object"] == "text_completion"
    assert data["choices"] == [
        {"index": 0, "text": "echo Tell", "finish_reason": "length", "logprobs": None}
    ]
    listed = httpx.post(server.url + "/v1/completions", json={**body, "prompt": ["a", "b"]}).json()
    assert [c["text"] for c in listed["choices"]] == ["echo a", "echo b"]
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}) as r:
        chunks = events(r)
    assert chunks[-1] == "[DONE]"
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1]) == "echo Tell"
    raw = b'{"model": "scripted-bpo",  "prompt": [1, 2]}'
    bad = httpx.post(server.url + "/v1/completions", content=raw)
    assert bad.status_code == 422
    assert server.raw_bodies[-1] == raw


def test_stall_holds_the_rest_of_a_stream_until_released(server) -> None:
    server.inject(Fault("stall", seconds=30))
    started = time.monotonic()
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["content"] == "echo"
        assert server.stalled == 1
        threading.Timer(0.2, server.release).start()
        rest = [line[5:].strip() for line in lines if line.startswith("data:")]
    assert rest[-1] == "[DONE]" and len(rest) == 4
    assert 0.2 <= time.monotonic() - started < 10
    assert server.stalled == 0


def test_stall_of_a_plain_answer_and_stop_ends_every_stall() -> None:
    server = ScriptedServer().start()
    server.inject(Fault("stall", seconds=60))
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30))
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while server.stalled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stalled == 1 and not outcome
    server.stop()
    caller.join(timeout=10)
    assert outcome and not caller.is_alive()


def test_break_cuts_a_stream_after_its_first_event(server) -> None:
    server.inject(Fault("break"))
    received: list[str] = []
    url = server.url + "/v1/chat/completions"
    with (
        pytest.raises(httpx.RemoteProtocolError),  # a chunked body cut short
        httpx.stream("POST", url, json={**CHAT, "stream": True}) as response,
    ):
        for line in response.iter_lines():
            received.append(line)
    assert [line for line in received if line.startswith("data:")][:1]
    assert not any("[DONE]" in line for line in received)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT).status_code == 200


def test_break_cuts_a_plain_answer_short(server) -> None:
    server.inject(Fault("break"))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(server.url + "/v1/chat/completions", json=CHAT)
    assert len(server.requests) == 1
