"""The BPO model served by Hugging Face Text Generation Inference (TGI), or ``bpo serve``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, get_args
from urllib.parse import urlparse

from bpo_integrations._loop import gather
from bpo_integrations.backends._http import map_in_threads, raise_mapped
from bpo_integrations.backends.base import Backend
from bpo_integrations.clients import PerLoopClients, aclose_on_their_loops, close_on_their_loops
from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.retry import TRANSIENT_STATUS, parse_retry_after
from bpo_integrations.settings import FinishReason, Generation, GenerationSettings
from bpo_integrations.template import format_bpo_prompt

try:
    from huggingface_hub import AsyncInferenceClient, InferenceClient
    from huggingface_hub.errors import (
        HfHubHTTPError,
        InferenceTimeoutError,
        OfflineModeIsEnabled,
        TextGenerationError,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "TGIBackend needs huggingface_hub>=1.0: pip install 'bpo-integrations[tgi]'"
    ) from error

_headers_warmed = threading.Lock()
_HEADERS_STARTED: list[threading.Thread] = []


def _warm_hub_headers() -> None:
    """Build huggingface_hub's request headers once, in a daemon thread.

    For its User-Agent, huggingface_hub fetches a registry of agent harnesses from the Hub the
    first time a process builds headers, synchronously: without this, on the first request, on
    the event loop, inside the latency budget (up to its 3 s timeout where the Hub is out of
    reach).
    """
    with _headers_warmed:
        if _HEADERS_STARTED:
            return
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        thread = threading.Thread(target=build_hf_headers, name="bpo-hf-headers", daemon=True)
        _HEADERS_STARTED.append(thread)
    thread.start()


_FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
START_HINT = (
    "start one with `bpo serve --port 8080` or TGI's image: `docker run --gpus all -p 8080:80 "
    "ghcr.io/huggingface/text-generation-inference:latest --model-id THUDM/BPO`"
)


class TGIBackend(Backend):
    """A BPO model behind a TGI server (``/generate``), through ``huggingface_hub``'s client.

    Each prompt is wrapped in the raw BPO template (``format_bpo_prompt``) and sent with
    ``details=True`` and ``return_full_text=False``. A list of prompts is sent as concurrent
    requests, at most ``max_concurrency`` at a time.

    TGI has neither ``bad_words`` nor a minimum length: the aggressive mode's cut markers
    (``settings.stop``) are sent as TGI ``stop`` sequences instead, its bad-word list and minimum
    length are not enforced, and the optimizer cuts the rewrite at the markers afterwards. Greedy
    settings (``do_sample=False``) send no ``temperature``/``top_p`` (TGI rejects ``top_p=1.0``).

    Errors: HTTP 429/502/503/504 raise :class:`TransientBackendError` (with the ``Retry-After``
    hint), an unreachable server :class:`BackendUnavailableError`, other HTTP errors and malformed
    answers :class:`BackendError` with the server's message.

    Note: with ``HF_HUB_OFFLINE=1`` ``huggingface_hub`` refuses every request, even to your own
    server; unset it for the process that uses this backend, or use
    :class:`~bpo_integrations.backends.openai.OpenAIBackend` on TGI's ``/v1`` Messages API.

    Args:
        endpoint: the server's base URL, e.g. ``"http://localhost:8080"``.
        token: sent as ``Authorization: Bearer <token>`` (Inference Endpoints, gated servers).
        headers: extra HTTP headers for every request.
        timeout: client timeout in seconds; the optimizer's remaining budget caps it per call.
        max_concurrency: concurrent requests for a list of prompts.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.testing.servers import ScriptedServer
        >>> rewrite = "Why is the sky blue? Explain the physics step by step."
        >>> with ScriptedServer(lambda raw_prompt: rewrite) as server:  # stands in for TGI
        ...     optimizer = BPOOptimizer(TGIBackend(server.url), timeout=10)
        ...     optimizer.optimize("why sky blue").text
        'Why is the sky blue? Explain the physics step by step.'
    """

    name = "tgi"
    max_batch_size = 1

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_concurrency: int = 16,
    ) -> None:
        if not isinstance(endpoint, str) or urlparse(endpoint).scheme not in ("http", "https"):
            raise ValueError(
                f"endpoint must be the TGI server's http(s) URL, e.g. 'http://localhost:8080', "
                f"got {endpoint!r}"
            )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.max_concurrency: int = max_concurrency
        self._async_clients = self._new_async_clients()
        _warm_hub_headers()

    def _new_async_clients(self) -> PerLoopClients[AsyncInferenceClient]:
        return PerLoopClients(lambda: AsyncInferenceClient(**self._client_kwargs(None)))

    def __getstate__(self) -> dict[str, Any]:
        # Clients belong to this process's event loops; a copy makes its own on first use.
        state = self.__dict__.copy()
        del state["_async_clients"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._async_clients = self._new_async_clients()

    def __repr__(self) -> str:
        return f"TGIBackend(endpoint={self.endpoint!r})"

    def cache_identity(self) -> Hashable:
        return ("tgi", self.endpoint)

    # -- request building -------------------------------------------------------------------

    def text_generation_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        """The keyword arguments of ``InferenceClient.text_generation`` for ``settings``."""
        kwargs: dict[str, Any] = {
            "details": True,
            "return_full_text": False,
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "seed": settings.seed,
            "stop": list(settings.stop) or None,
        }
        if settings.do_sample:
            kwargs["temperature"] = settings.temperature
            kwargs["top_p"] = settings.top_p if settings.top_p < 1 else None
        return kwargs

    def _client_timeout(self, timeout: float | None) -> float | None:
        if timeout is not None and timeout <= 0:
            raise OptimizationTimeoutError("latency budget spent before the call to TGI")
        limits = [t for t in (self.timeout, timeout) if t is not None]
        return min(limits) if limits else None

    def _client_kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {
            "model": self.endpoint,
            "token": self.token,
            "headers": self.headers,
            "timeout": self._client_timeout(timeout),
        }

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        client = InferenceClient(**self._client_kwargs(timeout))
        kwargs = self.text_generation_kwargs(settings)
        started = time.perf_counter()

        def one(prompt: str) -> Generation:
            try:
                output = client.text_generation(format_bpo_prompt(prompt), **kwargs)
            except Exception as error:
                raise_mapped(self._map_error, error, started)
            return self._to_generation(output)

        return map_in_threads(one, prompts, self.max_concurrency)

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        kwargs = self.text_generation_kwargs(settings)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        started = time.perf_counter()
        limit = self._client_timeout(timeout)
        client = self._async_clients.get()

        async def one(prompt: str) -> Generation:
            async with semaphore:
                try:
                    output = await client.text_generation(format_bpo_prompt(prompt), **kwargs)
                except Exception as error:
                    raise_mapped(self._map_error, error, started)
            return self._to_generation(output)

        try:
            return await asyncio.wait_for(gather(*(one(p) for p in prompts)), limit)
        except asyncio.TimeoutError as error:
            raise OptimizationTimeoutError(
                f"no answer from TGI at {self.endpoint} after {limit:.2f}s"
            ) from error

    def close(self) -> None:
        close_on_their_loops(self._async_clients.drain(), AsyncInferenceClient.close)

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        await aclose_on_their_loops(self._async_clients.drain(), AsyncInferenceClient.close)

    def _to_generation(self, output: Any) -> Generation:
        try:
            text = output.generated_text
            details = output.details
        except AttributeError as error:
            raise BackendError(
                f"TGI at {self.endpoint} answered without generation details: {output!r:.200}"
            ) from error
        if not isinstance(text, str):
            raise BackendError(f"TGI at {self.endpoint} answered a non-text generated_text")
        if details is None:
            return Generation(text=text)
        reason = details.finish_reason if details.finish_reason in _FINISH_REASONS else "unknown"
        return Generation(
            text=text,
            finish_reason=reason,  # type: ignore[arg-type]
            generated_tokens=details.generated_tokens,
            seed=details.seed,
        )

    # -- errors -----------------------------------------------------------------------------

    def _map_error(self, error: BaseException, elapsed: float) -> BaseException:
        url = self.endpoint
        if isinstance(error, BackendError | OptimizationTimeoutError):
            return error
        if isinstance(error, OfflineModeIsEnabled):
            return BackendError(
                f"huggingface_hub's offline mode (HF_HUB_OFFLINE=1) blocks every request, even to "
                f"your TGI server at {url}: unset HF_HUB_OFFLINE in this process, or use "
                f"OpenAIBackend(base_url='{url}/v1') on TGI's Messages API"
            )
        if isinstance(error, InferenceTimeoutError):
            return OptimizationTimeoutError(f"no answer from TGI at {url} after {elapsed:.2f}s")
        transport = _httpx_classes(error)
        if "ConnectError" in transport:
            return BackendUnavailableError(
                f"cannot connect to a TGI server at {url} ({error}): {START_HINT}"
            )
        if "TransportError" in transport:
            return BackendUnavailableError(
                f"TGI at {url} closed the connection without answering ({error}); "
                f"if no server runs there, {START_HINT}"
            )
        if isinstance(error, json.JSONDecodeError):
            return BackendError(f"TGI at {url} answered malformed JSON: {error}")
        http_error = error if isinstance(error, HfHubHTTPError) else error.__cause__
        if isinstance(error, TextGenerationError | HfHubHTTPError) and isinstance(
            http_error, HfHubHTTPError
        ):
            return self._map_http_error(http_error, message=str(error))
        return BackendError(f"TGI at {url} failed: {type(error).__name__}: {error}")

    def _map_http_error(self, error: HfHubHTTPError, *, message: str) -> BackendError:
        response = error.response
        status = response.status_code
        server_message = _error_text(response) or message.splitlines()[0]
        text = f"TGI at {self.endpoint} answered HTTP {status}: {server_message}"
        if status in TRANSIENT_STATUS:
            return TransientBackendError(
                text, retry_after=parse_retry_after(response.headers.get("retry-after"))
            )
        if status in (401, 403):
            text += " (pass token=... or headers={'Authorization': ...})"
        elif status == 404:
            text += " (the endpoint must be the server's base URL, e.g. http://localhost:8080)"
        return BackendError(text)


def _httpx_classes(error: BaseException) -> set[str]:
    """The httpx exception classes of ``error`` (huggingface_hub 1.x uses httpx, 2.x httpx2)."""
    return {
        c.__name__ for c in type(error).__mro__ if c.__module__.split(".")[0].startswith("httpx")
    }


def _error_text(response: Any) -> str | None:
    try:
        body = response.json()
    except Exception:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None
