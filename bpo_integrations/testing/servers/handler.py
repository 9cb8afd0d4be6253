"""The HTTP side of a scripted server: reading requests, sending answers, streams and faults."""

from __future__ import annotations

import json
import socket
from contextlib import suppress
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar

from bpo_integrations.testing.servers import identity, routes
from bpo_integrations.testing.servers.faults import Fault, is_kind
from bpo_integrations.testing.servers.script import RequestInvalid

if TYPE_CHECKING:
    from bpo_integrations.testing.servers.scripted import ScriptedServer

ERROR_TYPES = {
    422: "validation",
    424: "generation",
    429: "overloaded",
    500: "incomplete_generation",
    503: "unavailable",
}


class HungUp(ConnectionError):
    """The connection was cut: the client left mid-body, or a ``break`` fault hung up."""


def handler_for(server: ScriptedServer) -> type[ScriptedHandler]:
    """The request handler class of ``server``."""
    return type("Handler", (ScriptedHandler,), {"scripted": server})


def _retry_after(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedTGI/1.0"
    disable_nagle_algorithm = True  # else each sequential request waits ~40 ms for an ACK

    scripted: ClassVar[ScriptedServer]
    fault: Fault | None = None
    chunked = False
    events = 0
    raw = b""

    def setup(self) -> None:
        super().setup()
        self.scripted._track(self.connection, add=True)

    def finish(self) -> None:
        with suppress(OSError):
            super().finish()
        self.scripted._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers.items()}

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise HungUp
        self.raw = raw
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            return None
        return data if isinstance(data, dict) else None

    def send_json(
        self, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.send_raw(json.dumps(payload).encode(), status, headers)

    def send_raw(
        self, data: bytes, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        fault = self.fault if status == 200 else None
        if fault is not None and fault.kind == "stall":
            self.scripted._stall(fault.seconds)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if is_kind(fault, "break"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._hang_up()
            return
        self.wfile.write(data)

    def send_error_body(self, status: int, message: str, error_type: str | None = None) -> None:
        """An error in the shape of the server this one stands in for."""
        body: dict[str, Any]
        if self.scripted.flavor == "tgi":
            error_type = error_type or ERROR_TYPES.get(status, "error")
            body = {"error": message, "error_type": error_type}
        else:  # vLLM's, SGLang's and llama.cpp's OpenAI-shaped errors
            kind = "NotFoundError" if status == 404 else "BadRequestError"
            body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
        self.send_json(body, status)

    def _no_route(self, method: str, path: str) -> None:
        if self.scripted.flavor == "tgi":
            self.send_error_body(404, f"no route {method} {path}", "not_found")
        else:  # the FastAPI/httplib servers answer an unknown route so
            self.send_json({"detail": "Not Found"}, 404)

    def start_sse(self) -> None:
        self.chunked = is_kind(self.fault, "break")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if self.chunked:  # so that the cut is visible: a close-delimited body just ends
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def sse(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        event = f"data: {data}\n\n".encode()
        if self.chunked:
            event = f"{len(event):x}\r\n".encode() + event + b"\r\n"
        fault = self.fault if self.events == 0 else None  # faults act after the first event
        stall = fault is not None and fault.kind == "stall"
        held = self.scripted._begin_stall() if stall else None
        self.wfile.write(event)
        self.wfile.flush()
        self.events += 1
        if fault is not None and held is not None:
            self.scripted._stall(fault.seconds, held)
        elif is_kind(fault, "break"):
            self._hang_up()

    def _hang_up(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise HungUp

    def _apply_fault(self, fault: Fault | None) -> bool:
        """Handle faults that replace the answer; ``True`` when the request is finished."""
        if fault is None:
            return False
        if fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = _retry_after(fault.retry_after)
            error_type = ERROR_TYPES.get(fault.status, "error")
            message = f"scripted HTTP {fault.status}"
            if fault.status == 429:
                message = "Model is overloaded"
            body = {"error": message, "error_type": error_type}
            self.send_json(body, fault.status, headers)
            return True
        if fault.kind == "hang":
            stopping = self.scripted._stopping
            stopping.wait(fault.seconds)
            if stopping.is_set():
                self.close_connection = True
                return True
            return False
        if fault.kind == "drop_connection":
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        return False

    # -- routes ---------------------------------------------------------------------------------

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        server = self.scripted
        path = self._path()
        fault = self.fault = server._record(path, {}, self._headers())
        self.events = 0
        if self._apply_fault(fault):
            return
        flavored = identity.flavor_route(server, path)
        if is_kind(fault, "malformed_json"):
            self.send_raw(b'{"model_id": "broken')
        elif path == "/info" and server.flavor == "tgi":
            self.send_json(identity.info(server))
        elif path == "/health" and server.flavor == "llamacpp":
            self.send_json({"status": "ok"})
        elif path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/v1/models":
            self.send_json(identity.model_list(server))
        elif flavored is not None:
            self.send_json(flavored)
        else:
            self._no_route("GET", path)

    def do_POST(self) -> None:
        path = self._path()
        try:
            body = self._body()
        except ConnectionError:  # the client left mid-body: nothing was asked
            self.close_connection = True
            return
        recorded = body if body is not None else {"_invalid_json": True}
        fault = self.fault = self.scripted._record(path, recorded, self._headers(), self.raw)
        self.events = 0
        if self._apply_fault(fault):
            return
        if body is None:
            self.send_error_body(422, "Failed to deserialize the JSON body", "validation")
            return
        try:
            self._route_post(path, body, fault)
        except RequestInvalid as error:
            self.send_error_body(422, str(error), "validation")
        except ConnectionError:  # a ``break`` fault, or a client that left mid-answer
            self.close_connection = True
        except Exception as error:  # a failing responder: answer 500 instead of hanging up
            self.send_error_body(500, f"the responder failed: {error!r}", "responder")

    def _route_post(self, path: str, body: dict[str, Any], fault: Fault | None) -> None:
        tgi_route = path in ("/generate", "/generate_stream", "/")
        if tgi_route and self.scripted.flavor == "tgi":
            compat_stream = path == "/" and bool(body.get("stream"))
            stream = path == "/generate_stream" or compat_stream
            routes.generate(self, body, fault, stream=stream, as_list=path == "/")
        elif path in ("/v1/chat/completions", "/chat/completions"):
            routes.chat(self, body, fault)
        elif path == "/v1/completions" and body.get("stream"):
            routes.streamed_completion(self, body, fault)
        elif path == "/v1/completions":
            routes.completions(self, body, fault)
        else:
            self._no_route("POST", path)
