"""The HTTP side of ``bpo serve``: TGI's routes and OpenAI's, on one local model.

Routes, bodies, errors and streams follow TGI's OpenAPI schema, so that TGI's clients work
unchanged: ``POST /generate``, ``/generate_stream``, ``/`` (either, by ``"stream"``),
``/tokenize``, ``/v1/chat/completions``, ``/v1/completions``; ``GET /info``, ``/health``,
``/v1/models``, ``/metrics``. The routes live in :mod:`~bpo_integrations.serve.tgi_routes` and
:mod:`~bpo_integrations.serve.openai_routes`; what they share in
:class:`~bpo_integrations.serve.state.ServeState`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bpo_integrations.serve import openai_routes, tgi_routes
from bpo_integrations.serve.config import ServeConfig
from bpo_integrations.serve.engine import Engine
from bpo_integrations.serve.errors import InternalErrors, install_error_handlers
from bpo_integrations.serve.limits import BodySizeLimit
from bpo_integrations.serve.metrics import EngineStats, MetricsMiddleware, ServeMetrics
from bpo_integrations.serve.state import ROUTER_NAME, ServeState, version

__all__ = ["ROUTER_NAME", "create_app"]

_ROUTES = (
    "/",
    "/generate",
    "/generate_stream",
    "/tokenize",
    "/info",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
)


def create_app(engine: Engine, config: ServeConfig, *, model_id: str) -> FastAPI:
    """The ``bpo serve`` app for ``engine``; run it with any ASGI server (uvicorn).

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> from bpo_integrations.backends.local import LocalBackend  # doctest: +SKIP
        >>> engine = Engine(LocalBackend())  # doctest: +SKIP
        >>> uvicorn.run(create_app(engine, ServeConfig(), model_id="smollm2"))  # doctest: +SKIP
    """
    metrics = ServeMetrics(_ROUTES)
    state = ServeState.build(engine, config, model_id=model_id, metrics=metrics)
    metrics.registry.register(EngineStats(engine))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(
        title="bpo serve",
        description="Text Generation Inference's API on a local transformers model.",
        version=version(),
        lifespan=lifespan,
    )
    app.state.serve = state
    app.state.engine = engine
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)  # inside the errors
    app.add_middleware(InternalErrors)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    app.include_router(tgi_routes.router)
    app.include_router(openai_routes.router)
    return app
