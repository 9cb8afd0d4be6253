"""What an OpenAI-compatible server's error means, in the optimizer's error types.

A 404 is explained by asking the server: the models and LoRA modules it serves (``/models``), or
that the URL is a TGI server's root (``/info``) or lacks ``/v1``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import openai

from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.retry import TRANSIENT_STATUS, parse_retry_after

if TYPE_CHECKING:
    from bpo_integrations.backends.openai import _ChatBackend

_PROBE_TIMEOUT_S = 5.0
_START_HINT = (
    "start an OpenAI-compatible server, e.g. `vllm serve THUDM/BPO` (base_url "
    "'http://localhost:8000/v1') or `bpo serve --port 8000`"
)
_LORA_HINT = (
    "to serve a LoRA adapter under that name start vLLM with `--enable-lora --lora-modules "
    "{name}=/path/to/adapter` (SGLang: `--enable-lora --lora-paths {name}=/path/to/adapter`)"
)


def map_openai_error(backend: _ChatBackend, error: BaseException, elapsed: float) -> BaseException:
    """The optimizer's error for ``error``, raised by ``backend``'s client ``elapsed`` seconds
    into a call: a timeout, an unavailable or overloaded backend (with its ``Retry-After``), or a
    :class:`BackendError` that says what to fix."""
    where = backend.where
    if isinstance(error, BackendError | OptimizationTimeoutError):
        return error
    if isinstance(error, openai.APITimeoutError):
        return OptimizationTimeoutError(f"no answer from {where} after {elapsed:.2f}s")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        if type(cause).__name__ != "ConnectError":
            return BackendUnavailableError(
                f"{where} closed the connection without answering ({cause})"
            )
        hint = f": {_START_HINT}" if backend.base_url else ""
        return BackendUnavailableError(f"cannot connect to the chat API at {where} ({cause}){hint}")
    if isinstance(error, openai.NotFoundError):
        return explain_not_found(backend, error)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        text = f"{where} answered HTTP {status}: {_status_text(error)}"
        if status in TRANSIENT_STATUS:
            retry_after = parse_retry_after(error.response.headers.get("retry-after"))
            return TransientBackendError(text, retry_after=retry_after)
        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            text += " (pass api_key=... or set OPENAI_API_KEY)"
        return BackendError(text)
    if isinstance(error, json.JSONDecodeError | openai.APIResponseValidationError):
        return BackendError(f"{where} answered malformed JSON: {error}")
    return BackendError(f"{where} failed: {type(error).__name__}: {error}")


def explain_not_found(backend: _ChatBackend, error: openai.NotFoundError) -> BackendError:
    """Why the server answered 404, asked of the server: the served models, or its kind."""
    where, route = backend.where, "/completions" if backend.api == "completions" else "/chat"
    text = _status_text(error)
    base_url, model = backend.base_url, backend.model
    if base_url is None:
        listing = "`curl https://api.openai.com/v1/models`"
        return BackendError(
            f"model {model!r} not found at {where} ({text}): list the models with "
            f"{listing} or openai.OpenAI().models.list(), and pass one as model="
        )
    served = _probe(backend, lambda client: _served_models(client.models.list()))
    if served is None:
        return _no_openai_api(backend, base_url, route)
    base = [name for name, parent in served if parent is None]
    loras = [name for name, parent in served if parent is not None]
    if model in base + loras:
        return BackendError(
            f"{where} serves {model!r} but has no {route} route ({text}): "
            + (
                "pass api='chat' if it offers only the chat API"
                if backend.api == "completions"
                else "pass api='completions'"
            )
        )
    loaded = f"LoRA modules {loras}" if loras else "no LoRA module"
    return BackendError(
        f"model {model!r} is not served by {where}: it serves {base} and {loaded} "
        f"({text}). Pass one of them as model=, or, if {model!r} is a LoRA adapter, "
        + _LORA_HINT.format(name=model)
    )


def _no_openai_api(backend: _ChatBackend, base_url: str, route: str) -> BackendError:
    """The error of a server without ``/models``: a TGI server's root, or a URL without ``/v1``."""
    info = _probe(backend, lambda client: client.get("/info", cast_to=object))
    if isinstance(info, Mapping) and "model_id" in info:
        return BackendError(
            f"{base_url} is the root of a TGI server ({info.get('router')}, model "
            f"{info.get('model_id')!r}), not an OpenAI base URL: pass "
            f"base_url={base_url + '/v1'!r} (TGI's OpenAI routes), or use "
            f"TGIBackend({base_url!r})"
        )
    hint = (
        f"the base URL of vLLM, SGLang and llama.cpp's server ends in /v1: pass "
        f"base_url={base_url + '/v1'!r}"
        if not base_url.endswith("/v1")
        else "is it an OpenAI-compatible server?"
    )
    return BackendError(
        f"no OpenAI API at {base_url} (HTTP 404 on {route}, and on /models): {hint}"
    )


def _probe(backend: _ChatBackend, request: Callable[[openai.OpenAI], Any]) -> Any:
    """``request(client)`` with a short timeout; ``None`` if the server cannot answer it."""
    try:
        return request(backend.client().with_options(timeout=_PROBE_TIMEOUT_S))
    except (openai.OpenAIError, ValueError, TypeError):
        return None


def _served_models(page: Any) -> list[tuple[str, str | None]]:
    """``(id, parent)`` of each model a ``/models`` page lists; ``parent`` is the base model of a
    LoRA module (vLLM, SGLang), ``None`` for a base model."""
    return [(model.id, getattr(model, "parent", None)) for model in page.data]


def _status_text(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, str) and body:
        return body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    return error.message
