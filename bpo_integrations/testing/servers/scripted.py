"""The scripted server itself: its lifecycle, its scripted faults, and what it recorded."""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any

from bpo_integrations.testing.servers.faults import Fault
from bpo_integrations.testing.servers.handler import handler_for
from bpo_integrations.testing.servers.identity import DEFAULT_VERSIONS, FLAVORS, Flavor
from bpo_integrations.testing.servers.script import (
    Responders,
    echo,
)


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
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}: choose one of {FLAVORS}")
        self.responder: Callable[[str], str] = responder or echo
        self.chat_responder = chat_responder
        self.model_id = model_id
        self.flavor: Flavor = flavor
        self.lora_modules = tuple(lora_modules)
        self.version = version or DEFAULT_VERSIONS[flavor]
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
        httpd = _QuietServer((self.host, self.port), handler_for(self))
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

    @property
    def responders(self) -> Responders:
        """What answers a prompt now (the responders can be swapped while serving)."""
        return Responders(self.responder, self.chat_responder)
