"""The scripted test server answers in the shapes of TGI's OpenAPI schema and injects its faults."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any

import httpx
import jsonschema
import pytest

from bpo_integrations.testing.openapi import component, response_schema, validator
from bpo_integrations.testing.servers import Fault, ScriptedServer

pytestmark = pytest.mark.shared_data


def _validate(openapi: dict[str, Any], method: str, path: str, status: str, media: str, body: Any):
    validator(openapi, response_schema(openapi, method, path, status, media)).validate(body)


def _sse_events(response: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


@pytest.fixture
def server() -> Any:
    with ScriptedServer(lambda text: f"Rewrite of: {text}", model_id="THUDM/BPO") as srv:
        yield srv


@pytest.fixture
def client() -> Any:
    with httpx.Client(timeout=10) as http:
        yield http


def test_converter_rejects_bad_shapes(tgi_openapi: dict[str, Any]) -> None:
    schema = component("GenerateResponse")
    validator(tgi_openapi, schema).validate({"generated_text": "x", "details": None})
    with pytest.raises(jsonschema.ValidationError):
        validator(tgi_openapi, schema).validate({"details": None})
    details = {"finish_reason": "done", "generated_tokens": 1, "prefill": [], "tokens": []}
    with pytest.raises(jsonschema.ValidationError):
        validator(tgi_openapi, schema).validate({"generated_text": "x", "details": details})


def test_generate_with_details(server, client, tgi_openapi) -> None:
    body = {
        "inputs": "Tell me a joke",
        "parameters": {"details": True, "max_new_tokens": 64, "seed": 7, "do_sample": True},
    }
    response = client.post(server.url + "/generate", json=body)
    assert response.status_code == 200
    data = response.json()
    _validate(tgi_openapi, "post", "/generate", "200", "application/json", data)
    assert data["generated_text"] == "Rewrite of: Tell me a joke"
    details = data["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["seed"] == 7
    assert "".join(t["text"] for t in details["tokens"]) == data["generated_text"]
    assert details["generated_tokens"] == len(details["tokens"]) == 6
    assert server.requests == [("/generate", body)]


def test_generate_truncates_at_max_new_tokens_and_cuts_at_stop(server, client) -> None:
    short = {"inputs": "a b c d e", "parameters": {"details": True, "max_new_tokens": 3}}
    data = client.post(server.url + "/generate", json=short).json()
    assert data["generated_text"] == "Rewrite of: a"
    assert data["details"]["finish_reason"] == "length"
    stopped = {"inputs": "a [KEEP] b", "parameters": {"details": True, "stop": ["[KE"]}}
    data = client.post(server.url + "/generate", json=stopped).json()
    assert data["generated_text"] == "Rewrite of: a [KE"
    assert data["details"]["finish_reason"] == "stop_sequence"


def test_compat_root_route_answers_a_list(server, client, tgi_openapi) -> None:
    data = client.post(server.url + "/", json={"inputs": "hi", "stream": False}).json()
    _validate(tgi_openapi, "post", "/", "200", "application/json", data)
    assert data[0]["generated_text"] == "Rewrite of: hi"


def test_generate_stream(server, client, tgi_openapi) -> None:
    body = {"inputs": "Name three colors", "parameters": {"details": True}}
    with client.stream("POST", server.url + "/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e) for e in _sse_events(response)]
    check = validator(
        tgi_openapi,
        response_schema(tgi_openapi, "post", "/generate_stream", "200", "text/event-stream"),
    )
    for event in events:
        check.validate(event)
    assert [e["index"] for e in events] == list(range(len(events)))
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == "Rewrite of: Name three colors"
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]
    assert events[-1]["details"]["finish_reason"] == "eos_token"


def test_info_health_and_models(server, client, tgi_openapi) -> None:
    info = client.get(server.url + "/info").json()
    _validate(tgi_openapi, "get", "/info", "200", "application/json", info)
    assert info["model_id"] == "THUDM/BPO"
    assert client.get(server.url + "/health").status_code == 200
    models = client.get(server.url + "/v1/models").json()
    _validate(tgi_openapi, "get", "/v1/models", "200", "application/json", models)
    assert [m["id"] for m in models["data"]] == ["THUDM/BPO"]
    assert server.paths() == ["/info", "/health", "/v1/models"]


def test_chat_completion(server, client, tgi_openapi) -> None:
    body = {
        "model": "THUDM/BPO",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Explain DNS"},
        ],
        "max_tokens": 100,
    }
    data = client.post(server.url + "/v1/chat/completions", json=body).json()
    _validate(tgi_openapi, "post", "/v1/chat/completions", "200", "application/json", data)
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Rewrite of: Explain DNS",
    }
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 4


def test_chat_completion_stream(server, client, tgi_openapi) -> None:
    body = {
        "model": "THUDM/BPO",
        "messages": [{"role": "user", "content": "Explain DNS"}],
        "stream": True,
    }
    with client.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    check = validator(
        tgi_openapi,
        response_schema(tgi_openapi, "post", "/v1/chat/completions", "200", "text/event-stream"),
    )
    for chunk in chunks:
        check.validate(chunk)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == "Rewrite of: Explain DNS"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]


def test_chat_unknown_model_is_404(server, client, tgi_openapi) -> None:
    body = {"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}
    response = client.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 404
    _validate(tgi_openapi, "get", "/v1/models", "404", "application/json", response.json())
    assert "gpt-nope" in response.json()["error"]


@pytest.mark.parametrize(
    "parameters, problem",
    [
        ({"top_p": 1.0}, "top_p"),
        ({"temperature": 0}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_generate_validation_like_tgi(server, client, tgi_openapi, parameters, problem) -> None:
    response = client.post(server.url + "/generate", json={"inputs": "x", "parameters": parameters})
    assert response.status_code == 422
    _validate(tgi_openapi, "post", "/generate", "422", "application/json", response.json())
    assert problem in response.json()["error"]


def test_status_fault_with_retry_after(server, client, tgi_openapi) -> None:
    server.inject(Fault("status", status=429, retry_after=2), Fault("status", status=503))
    first = client.post(server.url + "/generate", json={"inputs": "x"})
    second = client.post(server.url + "/generate", json={"inputs": "x"})
    third = client.post(server.url + "/generate", json={"inputs": "x"})
    assert (first.status_code, second.status_code, third.status_code) == (429, 503, 200)
    _validate(tgi_openapi, "post", "/generate", "429", "application/json", first.json())
    assert first.json()["error_type"] == "overloaded"
    assert first.headers["retry-after"] == "2"
    assert "retry-after" not in second.headers
    assert server.pending_faults == 0
    assert len(server.requests) == 3


def test_empty_and_runaway_faults(server, client) -> None:
    server.inject(Fault("empty"), Fault("runaway"))
    body = {"inputs": "x", "parameters": {"details": True}}
    empty = client.post(server.url + "/generate", json=body).json()
    assert empty["generated_text"] == ""
    assert empty["details"]["generated_tokens"] == 0
    runaway = client.post(server.url + "/generate", json=body).json()
    assert len(runaway["generated_text"]) > 10_000
    assert runaway["details"]["finish_reason"] == "length"
    server.inject(Fault("runaway"))
    chat = {"model": "THUDM/BPO", "messages": [{"role": "user", "content": "x"}]}
    data = client.post(server.url + "/v1/chat/completions", json=chat).json()
    assert data["choices"][0]["finish_reason"] == "length"


def test_malformed_json_fault(server, client) -> None:
    server.inject(Fault("malformed_json"))
    response = client.post(server.url + "/generate", json={"inputs": "x"})
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_drop_connection_fault(server, client) -> None:
    server.inject(Fault("drop_connection"))
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(server.url + "/generate", json={"inputs": "x"})
    assert client.post(server.url + "/generate", json={"inputs": "x"}).status_code == 200


def test_a_client_that_hangs_up_mid_body_is_not_recorded(server, client) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b'{"model": "THUDM/BPO", "mess')
    body = {"model": "THUDM/BPO", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post(server.url + "/v1/chat/completions", json=body).status_code == 200
    assert [path for path, _ in server.requests] == ["/v1/chat/completions"]
    assert server.requests[0][1] == body


def _send_and_leave(server: ScriptedServer, *, reset_after_recorded: bool = False) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"inputs": "x"}).encode()
    head = f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")  # the server holds the connection
        sock.sendall(head.encode() + body)
        if reset_after_recorded:
            while len(server.requests) < 2:
                time.sleep(0.01)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_wait_disconnected_counts_what_a_client_sent_before_it_left(server) -> None:
    server.inject(Fault("hang", seconds=0.2))
    _send_and_leave(server)
    server.wait_disconnected()
    assert [path for path, _ in server.requests] == ["/health", "/generate"]


def test_a_client_that_hung_up_is_no_server_error(server, capfd) -> None:
    server.inject(Fault("hang", seconds=0.2))  # the client is gone when the answer is written
    _send_and_leave(server, reset_after_recorded=True)
    server.wait_disconnected()
    assert "Traceback" not in capfd.readouterr().err


def test_hang_fault_is_bounded_and_stop_wakes_it() -> None:
    server = ScriptedServer().start()
    server.inject(Fault("hang", seconds=0.3))
    started = time.perf_counter()
    assert httpx.post(server.url + "/generate", json={"inputs": "x"}).status_code == 200
    assert 0.3 <= time.perf_counter() - started < 3
    server.inject(Fault("hang", seconds=60))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json={"inputs": "x"}, timeout=0.3)
    handlers = set(server._handlers)
    assert handlers
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 3
    assert [t for t in handlers if t.is_alive()] == []


def test_stop_releases_port_and_keepalive_threads() -> None:
    server = ScriptedServer().start()
    url = server.url
    port = int(url.rsplit(":", 1)[1])
    with httpx.Client() as http:
        assert http.get(url + "/health").status_code == 200  # keeps a connection open
        handlers = set(server._handlers)
        assert handlers
        server.stop()
        assert [t for t in handlers if t.is_alive()] == []
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
    with socket.socket() as sock:  # the listening socket is closed (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    assert not any(t.name.startswith(f"scripted-server-{port}") for t in threading.enumerate())


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hang seconds"):
        Fault("hang", seconds=3600)
    with pytest.raises(TypeError, match="Fault objects"):
        ScriptedServer().inject("status")  # type: ignore[arg-type]
