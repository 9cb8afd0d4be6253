"""The HTTP side of ``bpo proxy``: OpenAI's routes, BPO on the newest user message, then upstream.

``POST /v1/chat/completions`` and ``POST /v1/completions`` are optimized (unless skipped) and
forwarded; every other ``/v1/...`` route (``/v1/models``, embeddings, files, ...) is forwarded as
it came. ``GET /health`` (no key needed) and ``GET /metrics`` (Prometheus) are the proxy's own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.proxy.config import ProxyConfig
from bpo_integrations.proxy.forward import Upstream, error_response
from bpo_integrations.proxy.metrics import CONTENT_TYPE, ProxyMetrics
from bpo_integrations.proxy.outcome import Outcome
from bpo_integrations.proxy.rewrite import (
    Skip,
    Target,
    chat_target,
    completion_target,
    parse_body,
    splice,
)
from bpo_integrations.result import FallbackReason

logger = logging.getLogger("bpo_integrations.proxy")

OPT_OUT_HEADER = "x-bpo"
OPT_OUT_VALUES = frozenset({"off", "false", "0", "no"})
_THREAD_PARSE_BYTES = 1 << 20  # bodies this large (images) are parsed off the event loop
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(config: ProxyConfig, optimizer: BPOOptimizer | None) -> FastAPI:
    """The proxy's ASGI app; ``optimizer=None`` forwards everything untouched (a plain proxy).

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Explain step by step."))
        >>> app = create_app(ProxyConfig(upstream="http://localhost:8000/v1"), optimizer)
        >>> sorted(r.path for r in app.routes)
        ['/health', '/metrics', '/v1/chat/completions', '/v1/completions', '/v1/{path:path}']
    """
    proxy = _Proxy(config, optimizer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        proxy.upstream = Upstream(config, proxy.metrics)
        try:
            yield
        finally:
            await proxy.upstream.aclose()

    app = FastAPI(
        title="bpo proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_middleware(_Edge, metrics=proxy.metrics, api_key=config.api_key)
    app.add_api_route("/health", proxy.health, methods=["GET"])
    app.add_api_route("/metrics", proxy.metrics_route, methods=["GET"])
    app.add_api_route("/v1/chat/completions", proxy.chat, methods=["POST"])
    app.add_api_route("/v1/completions", proxy.completions, methods=["POST"])
    app.add_api_route("/v1/{path:path}", proxy.passthrough, methods=_METHODS)
    app.state.proxy = proxy
    return app


class _Proxy:
    """The route handlers, over one upstream connection pool and one optimizer."""

    def __init__(self, config: ProxyConfig, optimizer: BPOOptimizer | None) -> None:
        self.config = config
        self.optimizer = optimizer
        self.metrics = ProxyMetrics()
        self.upstream: Upstream | None = None

    async def health(self) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_route(self) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def chat(self, request: Request) -> Response:
        return await self._optimize_and_forward(request, "chat/completions", chat_target)

    async def completions(self, request: Request) -> Response:
        return await self._optimize_and_forward(request, "completions", completion_target)

    async def passthrough(self, request: Request, path: str) -> Response:
        body = await request.body()
        return await self._forward(request, path, body, None)

    async def _optimize_and_forward(
        self, request: Request, path: str, find: Callable[[dict[str, Any]], Target | Skip]
    ) -> Response:
        raw = await request.body()
        if self.optimizer is None:
            return await self._forward(request, path, raw, None)
        outcome, body = await self._rewrite(request, raw, find, self.optimizer)
        return await self._forward(request, path, body, outcome)

    async def _forward(
        self, request: Request, path: str, body: bytes, outcome: Outcome | None
    ) -> Response:
        assert self.upstream is not None, "the app's lifespan did not run"
        return await self.upstream.forward(
            request.method,
            path,
            request.scope.get("query_string", b""),
            request.scope["headers"],
            body,
            extra_headers=None if outcome is None else outcome.headers(),
        )

    async def _rewrite(
        self,
        request: Request,
        raw: bytes,
        find: Callable[[dict[str, Any]], Target | Skip],
        optimizer: BPOOptimizer,
    ) -> tuple[Outcome, bytes]:
        """The outcome, and the body to send: the original bytes unless the prompt changed."""
        seconds = None
        if request.headers.get(OPT_OUT_HEADER, "").strip().lower() in OPT_OUT_VALUES:
            outcome = Outcome(skipped=Skip.OPT_OUT)
        else:
            big = len(raw) >= _THREAD_PARSE_BYTES
            body = await asyncio.to_thread(parse_body, raw) if big else parse_body(raw)
            if body is None:
                target: Target | Skip = Skip.INVALID_BODY
            elif self.config.skips_model(body.get("model")):
                target = Skip.MODEL
            else:
                target = find(body)
            if isinstance(target, Skip):
                outcome = Outcome(skipped=target)
            else:
                started = time.perf_counter()
                try:
                    outcome = Outcome(result=await optimizer.aoptimize(target.prompt))
                except Exception as error:  # on_error="raise", or a bug: the request goes on
                    outcome = Outcome(error=f"{type(error).__name__}: {error}")
                seconds = time.perf_counter() - started
                rewrite = outcome.result.optimized if outcome.result is not None else None
                if outcome.optimized and rewrite is not None and rewrite != target.prompt:
                    if big:
                        raw = await asyncio.to_thread(splice, raw, target, rewrite)
                    else:
                        raw = splice(raw, target, rewrite)
        self.metrics.record_outcome(outcome, seconds)
        reason = outcome.fallback_reason
        if reason is not None:
            log = (
                logger.info
                if outcome.fallback_kind == FallbackReason.CIRCUIT_OPEN.value
                else logger.warning
            )
            log("kept the original prompt (%s)", reason)
        return outcome, raw


class _Edge:
    """ASGI middleware: the proxy's own key, and the count and time of every answer."""

    def __init__(self, app: ASGIApp, metrics: ProxyMetrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    def _authorized(self, scope: Scope) -> bool:
        if self.expected is None or scope["path"] == "/health":
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                given = b"Bearer " + token.strip() if scheme.lower() == b"bearer" else value
                return hmac.compare_digest(given, self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.metrics.route_label(scope["path"])
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_and_note)
            else:
                denied = error_response(
                    401,
                    "this proxy wants its API key: 'Authorization: Bearer KEY' (bpo proxy "
                    "--api-key)",
                    "invalid_request_error",
                    "invalid_api_key",
                )
                await denied(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)
