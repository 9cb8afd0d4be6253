"""How ``bpo serve`` answers what went wrong: TGI's ``ErrorResponse`` for every error, from
validation to a bug, with the connection left usable."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpo_integrations.errors import BackendError
from bpo_integrations.serve.engine import InputError

logger = logging.getLogger("bpo_integrations.serve")


class ServeError(Exception):
    """An error answered as TGI's ``ErrorResponse`` with ``status``."""

    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(status: int, error_type: str, message: str, headers: Any = None) -> JSONResponse:
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )


def answer_errors_in_stream(request: Request) -> None:
    """From here on, a request TGI's validation refuses (or a full queue) is answered as TGI's
    ``/generate_stream`` answers it: HTTP 200 and one ``text/event-stream`` event holding the
    ``ErrorResponse`` (the schema's media type for these errors), which TGI's clients raise as the
    typed error (``huggingface_hub``'s ``ValidationError``, ``OverloadedError``). A body that is
    not TGI's JSON at all is refused before, with an HTTP 422."""
    request.state.errors_in_stream = True


EVENT_STREAM_ROUTES = frozenset({"/generate_stream"})
"""Routes whose every answer is ``text/event-stream`` in TGI's schema: a body that is not TGI's
JSON is an HTTP 422 there too, but its ``ErrorResponse`` is an event."""


def in_stream_error(error_type: str, message: str, *, status: int = 200) -> Response:
    payload = json.dumps({"error": message, "error_type": error_type})
    return Response(
        f"data: {payload}\n\n",
        status_code=status,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


class InternalErrors:
    """Any exception left is a 500 answered here, and the connection stays usable.

    A handler for ``Exception`` would run in Starlette's ``ServerErrorMiddleware``, which answers
    and then re-raises, so the server drops the keep-alive connection without saying so and the
    client's next request on it is reset.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:  # the status line is out: nothing clean is left to say
                raise
            logger.exception("request failed")
            message = f"internal server error: {type(error).__name__}: {error}"
            await error_response(500, "internal", message)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    async def serve_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ServeError)
        if error.status == 429 and getattr(request.state, "errors_in_stream", False):
            return in_stream_error(error.error_type, error.message)
        return error_response(error.status, error.error_type, error.message, error.headers)

    async def input_error(request: Request, error: Exception) -> Response:
        message = f"Input validation error: {error}"
        if getattr(request.state, "errors_in_stream", False):
            return in_stream_error("validation", message)
        return error_response(422, "validation", message)

    async def request_validation(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        message = _describe_validation(error)
        if request.url.path in EVENT_STREAM_ROUTES:  # the schema's media type for its 422
            return in_stream_error("validation", message, status=422)
        return error_response(422, "validation", message)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        if error.status_code == 400:  # FastAPI could not decode the body at all
            message = f"Input validation error: malformed body ({error.detail}): send UTF-8 JSON"
            if request.url.path in EVENT_STREAM_ROUTES:
                return in_stream_error("validation", message, status=422)
            return error_response(422, "validation", message)
        kind = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            error.status_code, "http"
        )
        return error_response(
            error.status_code, kind, str(error.detail), getattr(error, "headers", None)
        )

    async def client_gone(request: Request, error: Exception) -> Response:
        return error_response(499, "client_closed", "the client closed the connection")

    async def generation_error(request: Request, error: Exception) -> Response:
        logger.warning("generation failed: %s", error)
        return error_response(424, "generation", f"Request failed during generation: {error}")

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ServeError: serve_error,
        InputError: input_error,
        RequestValidationError: request_validation,
        StarletteHTTPException: http_error,
        ClientGone: client_gone,
        BackendError: generation_error,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


def _describe_validation(error: RequestValidationError) -> str:
    """One line per problem: where it is and what is wrong, e.g. ``parameters.top_p: ...``."""
    problems = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        if item.get("type") == "json_invalid":
            ctx = item.get("ctx") or {}
            problems.append(
                f"malformed JSON ({ctx.get('error', item.get('msg'))}): send a JSON object "
                "with the fields of TGI's schema"
            )
            continue
        if where == "body" and item.get("type") in ("model_attributes_type", "dict_type"):
            problems.append(
                "the body must be a JSON object (and the request must say Content-Type: "
                "application/json)"
            )
            continue
        problems.append(f"{where}: {item.get('msg')}")
    return "Input validation error: " + "; ".join(problems)
