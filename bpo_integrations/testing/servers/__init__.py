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

It stands in for those servers, not for ``bpo serve``: its request validation is TGI's own (TGI
refuses ``top_p=1.0``, which ``bpo serve`` accepts as "no nucleus sampling"), so it does not reuse
``bpo_integrations.serve``'s schemas and rules, and it needs none of the ``serve`` extra. The tests
check its answers against TGI's ``openapi.json``, as they check ``bpo serve``'s.

Example:
    >>> from huggingface_hub import InferenceClient
    >>> with ScriptedServer(lambda text: "Explain it step by step.") as server:
    ...     with hf_inference_online():
    ...         InferenceClient(server.url).text_generation("Why?", max_new_tokens=20)
    'Explain it step by step.'
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from bpo_integrations.testing.servers.faults import Fault, FaultKind
from bpo_integrations.testing.servers.identity import Flavor
from bpo_integrations.testing.servers.scripted import ScriptedServer

__all__ = [
    "Fault",
    "FaultKind",
    "Flavor",
    "ScriptedServer",
    "hf_inference_online",
    "iter_sse",
    "unused_url",
]


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
