"""The request-body limit of ``bpo serve``: no body larger than the server takes is ever held.

A body that says it is too large (``Content-Length``) is refused before any of it is read; one
sent without a length (chunked) is counted as it arrives and refused at the first byte over.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from bpo_integrations.serve.errors import error_response


def too_large_message(max_bytes: int, given: int | None) -> str:
    size = f"{given} bytes" if given is not None else "more"
    return (
        f"Request body too large: the limit is {max_bytes} bytes, given {size}. Send a shorter "
        "prompt, or start bpo serve with a larger --max-body-bytes"
    )


class BodySizeLimit:
    """Answer HTTP 413 ``{"error", "error_type": "payload_too_large"}`` for a body over the limit.

    Install it inside the error layer (added before it), so that the 413 raised while the route
    reads the body is answered by the app's error handlers.

    Example:
        >>> from fastapi import FastAPI
        >>> app = FastAPI()
        >>> app.add_middleware(BodySizeLimit, max_bytes=1 << 20)
    """

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            message = too_large_message(self.max_bytes, declared)
            response = error_response(
                413, "payload_too_large", message, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large_message(self.max_bytes, None))
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Any) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
