"""The API key check of ``bpo serve``: a FastAPI dependency of every route but ``/health``."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from bpo_integrations.serve.errors import ServeError
from bpo_integrations.serve.state import serve_state


async def require_key(request: Request) -> None:
    """HTTP 401 unless the request says ``Authorization: Bearer <the server's key>``."""
    api_key = serve_state(request).config.api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        problem = "missing" if not header else "wrong"
        raise ServeError(
            401,
            "authentication",
            f"Unauthorized: {problem} API key. Send the server's key (bpo serve --api-key, "
            "$BPO_API_KEY) as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


PROTECTED = [Depends(require_key)]
"""The ``dependencies`` of a route that needs the API key."""
