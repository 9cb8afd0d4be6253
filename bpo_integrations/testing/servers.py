"""A real HTTP server on 127.0.0.1 that speaks TGI's and OpenAI's APIs with scripted answers.

Standard library only. It answers with ``responder(text)`` and can inject faults (HTTP errors with
``Retry-After``, hangs, malformed JSON, dropped connections, streams that stall or break after their
first event, empty or runaway completions), so that clients, backends and proxies are tested
against real sockets rather than mocks.

Response shapes follow TGI's published OpenAPI schema (``GenerateResponse``, ``StreamResponse``,
``Info``, ``ErrorResponse``, ``ChatCompletion``, ``ChatCompletionChunk``, ``ModelInfo``). With
``flavor="vllm"``, ``"sglang"`` or ``"llamacpp"`` it answers the routes by which those servers
tell what they are instead of TGI's (``/version``; ``/server_info``; ``/props``), OpenAI-shaped
errors, and ``/v1/models`` with the LoRA modules it serves.

Example:
    >>> from huggingface_hub import InferenceClient
    >>> with ScriptedServer(lambda text: "Explain it step by step.") as server:
    ...     with hf_inference_online():
    ...         InferenceClient(server.url).text_generation("Why?", max_new_tokens=20)
    'Explain it step by step.'
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import sys
import threading
import time
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from bpo_integrations.settings import FinishReason

FaultKind = Literal[
    "status", "hang", "malformed_json", "drop_connection", "empty", "runaway", "stall", "break"
]
_KINDS = typing.get_args(FaultKind)
Flavor = Literal["tgi", "vllm", "sglang", "llamacpp"]
_FLAVORS = ("tgi", "vllm", "sglang", "llamacpp")
_OWNED_BY = {"tgi": "bpo-integrations", "vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}

_ERROR_TYPES = {
    422: "validation",
    424: "generation",
    429: "overloaded",
    500: "incomplete_generation",
    503: "unavailable",
}
_RUNAWAY_WORDS = 4000
_MAX_HANG_S = 120.0


@dataclass(frozen=True)
class Fault:
    """One scripted failure, consumed by the next request the server receives.

    - ``status``: answer HTTP ``status`` with a TGI ``ErrorResponse`` body, and a ``Retry-After``
      header when ``retry_after`` is set.
    - ``hang``: wait ``seconds`` (at most 120, and never past :meth:`ScriptedServer.stop`), then
      answer normally.
    - ``malformed_json``: answer 200 with a truncated JSON body (or SSE event).
    - ``drop_connection``: close the socket without answering.
    - ``stall``: a stream sends its first event, then waits ``seconds`` (or until
      :meth:`ScriptedServer.release`) before the rest; a plain answer waits before it is sent.
    - ``break``: a stream sends its first event (chunked) and closes the socket; a plain answer
      sends half its body (``Content-Length`` says the whole) and closes the socket.
    - ``empty``: answer an empty completion.
    - ``runaway``: answer a very long completion with ``finish_reason`` ``"length"``.
    """

    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: choose one of {_KINDS}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"a fault status must be an HTTP error (400-599), got {self.status}")
        if not 0 <= self.seconds <= _MAX_HANG_S:
            raise ValueError(f"hang seconds must be in [0, {_MAX_HANG_S}], got {self.seconds}")


@dataclass(frozen=True)
class _Completion:
    text: str
    finish_reason: FinishReason
    words: list[str]
    seed: int | None
    stop: str | None = None
    """The stop sequence that ended the completion, if one did."""


class _ValidationError(Exception):
    pass


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up is not a server failure: no traceback for it.

    The accept queue holds 1024 connections (socketserver's default, 5, resets the connections of
    a burst of concurrent clients before they are accepted).

    (On Python 3.11 formatting a traceback parses source with ``ast``, and two threads parsing at
    once can fail with "SystemError: AST constructor recursion depth mismatch".)
    """

    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _HungUp(ConnectionError):
    """The connection was cut: the client left mid-body, or a ``break`` fault hung up."""


def _echo(text: str) -> str:
    return text


def _split_words(text: str) -> list[str]:
    """One token per whitespace-separated word, each keeping its leading whitespace."""
    words: list[str] = []
    current = ""
    for char in text:
        if char.isspace() and current.strip():
            words.append(current)
            current = ""
        current += char
    if current:
        words.append(current)
    return words


class ScriptedServer:
    """A TGI- and OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers and faults.

    ``responder(text)`` returns the completion: ``text`` is TGI's ``inputs`` for ``/generate``,
    ``/generate_stream`` and ``/``, the last user message for ``/v1/chat/completions``, or the
    ``prompt`` for ``/v1/completions``. The default echoes ``text``. ``chat_responder(messages)``,
    when given, answers chat requests instead, from the whole ``messages`` list (system prompt
    and earlier turns included).
    ``max_new_tokens``/``max_tokens`` truncate the completion (one token per word,
    ``finish_reason`` ``"length"``) and ``stop`` cuts it, as a real server does.

    ``requests`` records ``(path, json_body)`` of every request, in order (``{}`` for GET),
    ``request_headers`` their headers (lower-case names) and ``raw_bodies`` their bytes.

    Endpoints: ``POST /generate``, ``POST /generate_stream``, ``POST /`` (TGI's compat route),
    ``GET /info``, ``GET /health``, ``POST /v1/chat/completions`` (``stream`` too),
    ``POST /v1/completions`` (a raw ``prompt``, answered by ``responder(prompt)``; ``stream``
    too) and ``GET /v1/models``. TGI answers ``/v1/models`` with one ``ModelInfo``; this server
    adds the ``data`` list that OpenAI clients read, so both kinds of client work.

    ``flavor`` picks the server it stands in for: ``"tgi"`` (the default, with the routes above),
    ``"vllm"`` (``GET /version``), ``"sglang"`` (``GET /server_info``, ``/model_info``) or
    ``"llamacpp"`` (``GET /props``); the last three have no TGI routes, answer errors in OpenAI's
    shape (``{"error": {"message": ...}}``) and list ``lora_modules`` in ``/v1/models`` with
    ``parent`` set to ``model_id``, as vLLM and SGLang do. An OpenAI request naming a model that is
    neither ``model_id`` nor a LoRA module gets 404.

    Example:
        >>> import httpx
        >>> with ScriptedServer(str.upper) as server:
        ...     server.inject(Fault("status", status=429, retry_after=1))
        ...     first = httpx.post(server.url + "/generate", json={"inputs": "hi"})
        ...     second = httpx.post(server.url + "/generate", json={"inputs": "hi"})
        >>> first.status_code, first.headers["retry-after"], second.json()["generated_text"]
        (429, '1', 'HI')
    """

    def __init__(
        self,
        responder: Callable[[str], str] | None = None,
        *,
        chat_responder: Callable[[list[dict[str, Any]]], str] | None = None,
        model_id: str = "scripted-bpo",
        flavor: Flavor = "tgi",
        lora_modules: Sequence[str] = (),
        version: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if flavor not in _FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}: choose one of {_FLAVORS}")
        self.responder: Callable[[str], str] = responder or _echo
        self.chat_responder = chat_responder
        self.model_id = model_id
        self.flavor: Flavor = flavor
        self.lora_modules = tuple(lora_modules)
        self.version = (
            version
            or {
                "tgi": "3.3.4-scripted",
                "vllm": "0.32.0",
                "sglang": "0.5.23",
                "llamacpp": "b7000-scripted",
            }[flavor]
        )
        self.host = host
        self.port = port
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.request_headers: list[dict[str, str]] = []
        self.raw_bodies: list[bytes] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._released = threading.Condition()
        self._releases = 0
        self._stalled = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() or use it as a context")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> ScriptedServer:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("the server is already running")
        self._stopping.clear()
        httpd = _QuietServer((self.host, self.port), _make_handler(self))
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-server-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging handlers, close open connections and the listening socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        self.release()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
            handlers = list(self._handlers)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for handler in handlers:
            handler.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting ----------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each subsequent request (any endpoint) consumes the next one."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"inject() takes Fault objects, got {type(fault).__name__}")
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """Faults injected but not consumed yet."""
        with self._lock:
            return len(self._faults)

    def release(self) -> None:
        """End the wait of every answer held by a ``stall`` fault now."""
        with self._released:
            self._releases += 1
            self._released.notify_all()

    @property
    def stalled(self) -> int:
        """Answers held by a ``stall`` fault right now."""
        with self._released:
            return self._stalled

    def paths(self) -> list[str]:
        """The paths of the requests received so far, in order."""
        with self._lock:
            return [path for path, _ in self.requests]

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the connections this server accepted are closed, their requests recorded.

        After a client is cancelled, requests it already sent on them may still be read and
        recorded; counting ``requests`` after this call counts them too.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._connections:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients kept {len(self._connections)} connection(s) open")
            time.sleep(0.01)

    # -- internals used by the handler ----------------------------------------------------------

    def _record(
        self, path: str, body: dict[str, Any], headers: dict[str, str], raw: bytes = b""
    ) -> Fault | None:
        with self._lock:
            self.requests.append((path, body))
            self.request_headers.append(headers)
            self.raw_bodies.append(raw)
            return self._faults.popleft() if self._faults else None

    def _begin_stall(self) -> int:
        """Count an answer as held (before its client can see it held); the release count."""
        with self._released:
            self._stalled += 1
            return self._releases

    def _stall(self, seconds: float, releases: int | None = None) -> None:
        """Hold until a release after ``releases`` (taken by :meth:`_begin_stall`), or stop."""
        if releases is None:
            releases = self._begin_stall()
        with self._released:
            try:
                self._released.wait_for(
                    lambda: self._releases != releases or self._stopping.is_set(), seconds
                )
            finally:
                self._stalled -= 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                # A thread stays listed until it has ended (it still runs after finish()), so
                # that stop() can join it; ended ones are dropped here.
                self._handlers = {t for t in self._handlers if t.is_alive()}
                self._handlers.add(threading.current_thread())
            else:
                self._connections.discard(conn)

    def _complete(
        self,
        text: str,
        fault: Fault | None,
        *,
        max_tokens: int | None,
        stop: list[str],
        seed: int | None,
        keep_stop: bool,
        messages: list[dict[str, Any]] | None = None,
    ) -> _Completion:
        if fault is not None and fault.kind == "runaway":
            words = _split_words("more " * _RUNAWAY_WORDS)
            return _Completion("".join(words), "length", words, seed)
        if fault is not None and fault.kind == "empty":
            completion = ""
        elif messages is not None and self.chat_responder is not None:
            completion = self.chat_responder(messages)
        else:
            completion = self.responder(text)
        if not isinstance(completion, str):
            raise TypeError(f"the responder must return a str, got {type(completion).__name__}")
        finish: FinishReason = "eos_token"
        cuts = [(completion.find(s), s) for s in stop if s and s in completion]
        marker: str | None = None
        if cuts:
            index, marker = min(cuts)
            completion = completion[: index + len(marker)] if keep_stop else completion[:index]
            finish = "stop_sequence"
        words = _split_words(completion)
        if max_tokens is not None and len(words) > max_tokens:
            words = words[:max_tokens]
            finish, marker = "length", None
        return _Completion("".join(words), finish, words, seed, marker)

    def _info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": 4096,
            "max_total_tokens": 8192,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": self.version,
            "sha": None,
            "docker_label": None,
        }

    def _model_info(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": _OWNED_BY[self.flavor],
        }

    def _model_list(self) -> dict[str, Any]:
        base = self._model_info()
        if self.flavor != "tgi":
            base = {**base, "root": self.model_id, "parent": None}
        loras = [
            {**base, "id": name, "root": f"/adapters/{name}", "parent": self.model_id}
            for name in self.lora_modules
        ]
        if self.flavor == "tgi":  # TGI's one ModelInfo, plus the list OpenAI clients read
            return {**self._model_info(), "data": [base, *loras]}
        return {"object": "list", "data": [base, *loras]}

    def _served(self, model: Any) -> bool:
        names = {self.model_id, *self.lora_modules}
        return model in names or (self.flavor == "tgi" and model == "tgi")

    def _flavor_route(self, path: str) -> dict[str, Any] | None:
        """The body of a GET route by which a vLLM, SGLang or llama.cpp server identifies itself."""
        if self.flavor == "vllm" and path == "/version":
            return {"version": self.version}
        if self.flavor == "sglang" and path in ("/server_info", "/get_server_info"):
            return {
                "model_path": self.model_id,
                "served_model_name": self.model_id,
                "enable_lora": bool(self.lora_modules),
                "version": self.version,
                "frontend": "python",
            }
        if self.flavor == "sglang" and path in ("/model_info", "/get_model_info"):
            return {"model_path": self.model_id, "is_generation": True}
        if self.flavor == "llamacpp" and path == "/props":
            return {
                "default_generation_settings": {"n_ctx": 4096, "params": {"temperature": 0.8}},
                "total_slots": 1,
                "model_path": f"/models/{self.model_id}.gguf",
                "build_info": self.version,
                "chat_template": "",
            }
        return None


def _validate_tgi(body: dict[str, Any]) -> dict[str, Any]:
    """TGI's router validation of a generate request (the checks clients can get wrong)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise _ValidationError("`inputs` must be a non-empty string")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _ValidationError("`parameters` must be an object")
    temperature = params.get("temperature")
    if temperature is not None and temperature <= 0:
        raise _ValidationError("`temperature` must be strictly positive")
    top_p = params.get("top_p")
    if top_p is not None and not 0 < top_p < 1:
        raise _ValidationError("`top_p` must be > 0.0 and < 1.0")
    max_new_tokens = params.get("max_new_tokens")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise _ValidationError("`max_new_tokens` must be strictly positive")
    stop = params.get("stop") or []
    if not isinstance(stop, list) or len(stop) > 4:
        raise _ValidationError("`stop` supports up to 4 stop sequences")
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise _ValidationError("`seed` must be a non-negative integer")
    return params


def _make_handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ScriptedTGI/1.0"
        disable_nagle_algorithm = True  # else each sequential request waits ~40 ms for an ACK

        fault: Fault | None = None
        chunked = False
        events = 0
        raw = b""

        def setup(self) -> None:
            super().setup()
            server._track(self.connection, add=True)

        def finish(self) -> None:
            with suppress(OSError):
                super().finish()
            server._track(self.connection, add=False)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- plumbing ---------------------------------------------------------------------------

        def _headers(self) -> dict[str, str]:
            return {key.lower(): value for key, value in self.headers.items()}

        def _body(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length:
                raise _HungUp
            self.raw = raw
            if not raw:
                return {}
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None

        def _send_json(
            self, payload: Any, status: int = 200, headers: dict[str, str] | None = None
        ) -> None:
            self._send_raw(json.dumps(payload).encode(), status, headers)

        def _send_raw(
            self, data: bytes, status: int = 200, headers: dict[str, str] | None = None
        ) -> None:
            fault = self.fault if status == 200 else None
            kind = None if fault is None else fault.kind
            if fault is not None and kind == "stall":
                server._stall(fault.seconds)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if kind == "break":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._hang_up()
                return
            self.wfile.write(data)

        def _send_error(self, status: int, message: str, error_type: str | None = None) -> None:
            body: dict[str, Any]
            if server.flavor == "tgi":
                error_type = error_type or _ERROR_TYPES.get(status, "error")
                body = {"error": message, "error_type": error_type}
            else:  # vLLM's, SGLang's and llama.cpp's OpenAI-shaped errors
                kind = "NotFoundError" if status == 404 else "BadRequestError"
                body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
            self._send_json(body, status)

        def _no_route(self, method: str, path: str) -> None:
            if server.flavor == "tgi":
                self._send_error(404, f"no route {method} {path}", "not_found")
            else:  # the FastAPI/httplib servers answer an unknown route so
                self._send_json({"detail": "Not Found"}, 404)

        def _start_sse(self) -> None:
            self.chunked = self.fault is not None and self.fault.kind == "break"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            if self.chunked:  # so that the cut is visible: a close-delimited body just ends
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True

        def _sse(self, payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            event = f"data: {data}\n\n".encode()
            if self.chunked:
                event = f"{len(event):x}\r\n".encode() + event + b"\r\n"
            fault = self.fault if self.events == 0 else None  # faults act after the first event
            held = server._begin_stall() if fault is not None and fault.kind == "stall" else None
            self.wfile.write(event)
            self.wfile.flush()
            self.events += 1
            if fault is not None and held is not None:
                server._stall(fault.seconds, held)
            elif fault is not None and fault.kind == "break":
                self._hang_up()

        def _hang_up(self) -> None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            raise _HungUp

        def _apply_fault(self, fault: Fault | None) -> bool:
            """Handle faults that replace the answer; ``True`` when the request is finished."""
            if fault is None:
                return False
            if fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    value = fault.retry_after
                    headers["Retry-After"] = str(int(value)) if value == int(value) else str(value)
                error_type = _ERROR_TYPES.get(fault.status, "error")
                message = f"scripted HTTP {fault.status}"
                if fault.status == 429:
                    message = "Model is overloaded"
                body = {"error": message, "error_type": error_type}
                self._send_json(body, fault.status, headers)
                return True
            if fault.kind == "hang":
                server._stopping.wait(fault.seconds)
                if server._stopping.is_set():
                    self.close_connection = True
                    return True
                return False
            if fault.kind == "drop_connection":
                self.close_connection = True
                with suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return True
            return False

        # -- routes -----------------------------------------------------------------------------

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            fault = self.fault = server._record(path, {}, self._headers())
            self.events = 0
            if self._apply_fault(fault):
                return
            flavored = server._flavor_route(path)
            if fault is not None and fault.kind == "malformed_json":
                self._send_raw(b'{"model_id": "broken')
            elif path == "/info" and server.flavor == "tgi":
                self._send_json(server._info())
            elif path == "/health" and server.flavor == "llamacpp":
                self._send_json({"status": "ok"})
            elif path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/v1/models":
                self._send_json(server._model_list())
            elif flavored is not None:
                self._send_json(flavored)
            else:
                self._no_route("GET", path)

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            try:
                body = self._body()
            except ConnectionError:  # the client left mid-body: nothing was asked
                self.close_connection = True
                return
            recorded = body if body is not None else {"_invalid_json": True}
            fault = self.fault = server._record(path, recorded, self._headers(), self.raw)
            self.events = 0
            if self._apply_fault(fault):
                return
            if body is None:
                self._send_error(422, "Failed to deserialize the JSON body", "validation")
                return
            try:
                tgi_route = path in ("/generate", "/generate_stream", "/")
                if tgi_route and server.flavor == "tgi":
                    compat_stream = path == "/" and bool(body.get("stream"))
                    stream = path == "/generate_stream" or compat_stream
                    self._generate(body, fault, stream=stream, as_list=path == "/")
                elif path in ("/v1/chat/completions", "/chat/completions"):
                    self._chat(body, fault)
                elif path == "/v1/completions" and body.get("stream"):
                    self._streamed_completion(body, fault)
                elif path == "/v1/completions":
                    self._completions(body, fault)
                else:
                    self._no_route("POST", path)
            except _ValidationError as error:
                self._send_error(422, str(error), "validation")
            except ConnectionError:  # a ``break`` fault, or a client that left mid-answer
                self.close_connection = True
            except Exception as error:  # a failing responder: answer 500 instead of hanging up
                self._send_error(500, f"the responder failed: {error!r}", "responder")

        def _generate(
            self, body: dict[str, Any], fault: Fault | None, *, stream: bool, as_list: bool
        ) -> None:
            params = _validate_tgi(body)
            inputs: str = body["inputs"]
            seed = params.get("seed")
            if seed is None and params.get("do_sample"):
                seed = random.randint(1, 2**31)
            done = server._complete(
                inputs,
                fault,
                max_tokens=params.get("max_new_tokens"),
                stop=list(params.get("stop") or []),
                seed=seed,
                keep_stop=True,
            )
            tokens = [
                {"id": next(server._ids) % 32000, "text": w, "logprob": -0.5, "special": False}
                for w in done.words
            ]
            text = inputs + done.text if params.get("return_full_text") else done.text
            malformed = fault is not None and fault.kind == "malformed_json"
            if stream:
                self._start_sse()
                if malformed:
                    self._sse('{"index": 0, "token": {"id": 1, "text": "bro')
                    return
                if not tokens:
                    tokens = [{"id": 2, "text": "</s>", "logprob": -0.1, "special": True}]
                for index, token in enumerate(tokens):
                    last = index == len(tokens) - 1
                    event: dict[str, Any] = {
                        "index": index,
                        "token": token,
                        "generated_text": text if last else None,
                        "details": {
                            "finish_reason": done.finish_reason,
                            "generated_tokens": len(done.words),
                            "input_length": len(_split_words(inputs)),
                            "seed": done.seed,
                        }
                        if last
                        else None,
                    }
                    self._sse(event)
                return
            if malformed:
                self._send_raw(b'{"generated_text": "broken')
                return
            response: dict[str, Any] = {"generated_text": text}
            if params.get("details", True):
                response["details"] = {
                    "finish_reason": done.finish_reason,
                    "generated_tokens": len(done.words),
                    "prefill": [],
                    "tokens": tokens,
                    "seed": done.seed,
                }
            self._send_json([response] if as_list else response)

        def _unknown_model(self, body: dict[str, Any]) -> bool:
            """Answer 404 (vLLM's message) for a model this server does not serve."""
            model = body.get("model")
            if server._served(model):
                return False
            served = ", ".join([server.model_id, *server.lora_modules])
            message = f"The model `{model}` does not exist. Valid aliases: {served}."
            self._send_error(404, message, "model")
            return True

        def _completions(self, body: dict[str, Any], fault: Fault | None) -> None:
            if self._unknown_model(body):
                return
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            bad_prompt = "`prompt` must be a string or a non-empty list of strings"
            if not isinstance(prompts, list) or not prompts:
                raise _ValidationError(bad_prompt)
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else list(stop)
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for index, text in enumerate(prompts):
                if not isinstance(text, str) or not text:
                    raise _ValidationError(bad_prompt)
                done = server._complete(
                    text,
                    fault,
                    max_tokens=body.get("max_tokens", 16),
                    stop=stop,
                    seed=body.get("seed"),
                    keep_stop=False,
                )
                matched = done.stop
                choice: dict[str, Any] = {
                    "index": index,
                    "text": done.text,
                    "finish_reason": "length" if done.finish_reason == "length" else "stop",
                    "logprobs": None,
                }
                if server.flavor == "vllm":
                    choice["stop_reason"] = matched
                if server.flavor == "sglang":
                    choice["matched_stop"] = matched
                choices.append(choice)
                prompt_tokens += len(_split_words(text))
                completion_tokens += len(done.words)
            if fault is not None and fault.kind == "malformed_json":
                self._send_raw(b'{"id": "cmpl-broken", "choices": [{"te')
                return
            self._send_json(
                {
                    "id": f"cmpl-{uuid.uuid4().hex[:12]}",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body.get("model") or server.model_id,
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )

        def _chat(self, body: dict[str, Any], fault: Fault | None) -> None:
            if self._unknown_model(body):
                return
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ValidationError("`messages` must be a non-empty list")
            text = _last_user_text(messages)
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else list(stop)
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
            done = server._complete(
                text,
                fault,
                max_tokens=max_tokens,
                stop=stop,
                seed=body.get("seed"),
                keep_stop=False,
                messages=messages,
            )
            finish = "length" if done.finish_reason == "length" else "stop"
            base = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "created": int(time.time()),
                "model": server.model_id,
                "system_fingerprint": "scripted-3.3.4",
            }
            usage = {
                "prompt_tokens": len(_split_words(text)),
                "completion_tokens": len(done.words),
                "total_tokens": len(_split_words(text)) + len(done.words),
            }
            malformed = fault is not None and fault.kind == "malformed_json"
            if body.get("stream"):
                self._start_sse()
                if malformed:
                    self._sse('{"id": "chatcmpl-broken", "choices": [{"delta": {"con')
                    return
                for index, word in enumerate(done.words or [""]):
                    last = index == max(len(done.words), 1) - 1
                    chunk: dict[str, Any] = {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": word},
                                "finish_reason": finish if last else None,
                                "logprobs": None,
                            }
                        ],
                        "usage": usage if last else None,
                    }
                    self._sse(chunk)
                self._sse("[DONE]")
                return
            if malformed:
                self._send_raw(b'{"id": "chatcmpl-broken", "choices": [{"mess')
                return
            self._send_json(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": done.text},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )

        def _streamed_completion(self, body: dict[str, Any], fault: Fault | None) -> None:
            """OpenAI's legacy ``/v1/completions`` streamed: one choice per prompt."""
            if self._unknown_model(body):
                return
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise _ValidationError("`prompt` must be a string or a list of strings")
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else list(stop)
            done = [
                server._complete(
                    p,
                    fault,
                    max_tokens=body.get("max_tokens", 16),
                    stop=stop,
                    seed=body.get("seed"),
                    keep_stop=False,
                )
                for p in prompts
            ]
            base = {
                "id": f"cmpl-{uuid.uuid4().hex[:12]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": server.model_id,
            }
            finish = ["length" if d.finish_reason == "length" else "stop" for d in done]
            self._start_sse()
            for index, (completion, reason) in enumerate(zip(done, finish, strict=True)):
                words = completion.words or [""]
                for position, word in enumerate(words):
                    last = position == len(words) - 1
                    choice = {
                        "index": index,
                        "text": word,
                        "finish_reason": reason if last else None,
                        "logprobs": None,
                    }
                    self._sse({**base, "choices": [choice]})
            self._sse("[DONE]")

    return Handler


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise _ValidationError("`messages` has no user message")


def iter_sse(lines: Iterator[str]) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent-events stream (a helper for tests)."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


@contextmanager
def hf_inference_online() -> Iterator[None]:
    """Lift ``huggingface_hub``'s offline mode inside the block, for clients of a local server.

    With ``HF_HUB_OFFLINE=1`` (set by this project's test configuration) ``huggingface_hub``
    refuses every ``InferenceClient`` request, even to 127.0.0.1. Not thread-safe: tests only.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def unused_url(host: str = "127.0.0.1") -> str:
    """The URL of a local port with nothing listening on it (connections are refused)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"
