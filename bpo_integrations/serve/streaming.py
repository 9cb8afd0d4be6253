"""Server-sent events: how ``bpo serve`` frames its streams, and what happens when one ends."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from bpo_integrations.serve.admission import Slot

logger = logging.getLogger("bpo_integrations.serve")


def sse(data: BaseModel | dict[str, Any]) -> str:
    """One ``data:`` event holding ``data`` as JSON."""
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {payload}\n\n"


def sse_stream(
    events: AsyncGenerator[str, None], slot: Slot, *, done: bool = False
) -> StreamingResponse:
    """Stream ``events``; however the stream ends, the generation stops and the slot frees.

    ``done``: end with OpenAI's ``data: [DONE]``.
    """

    async def body() -> AsyncGenerator[str, None]:
        try:
            async for event in events:
                yield event
        except Exception as error:  # the status line is sent: report in the stream, as TGI
            logger.exception("generation failed in a stream")
            message = f"Request failed during generation: {type(error).__name__}: {error}"
            yield sse({"error": message, "error_type": "generation"})
        finally:
            slot.release()
        if done:
            yield "data: [DONE]\n\n"

    stream = body()

    async def cleanup() -> None:
        # a client that disconnects leaves both generators suspended: close them now
        slot.release()
        await stream.aclose()
        await events.aclose()

    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(cleanup),
    )
