"""Load the model for a :class:`ServeConfig` and serve it with uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish (at most
``graceful_shutdown_s``), then exits: uvicorn's graceful shutdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from fastapi import FastAPI

from bpo_integrations._uvicorn_thread import uvicorn_in_thread
from bpo_integrations.serve.config import ServeConfig


def served_model_id(config: ServeConfig) -> str:
    """The model id that ``/info`` and ``/v1/models`` report."""
    if config.served_model_name:
        return config.served_model_name
    if config.model:
        return config.model
    from bpo_integrations.models import DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME


def build_app(config: ServeConfig) -> FastAPI:
    """Load the model (this takes a while) and return the app that serves it.

    Example:
        >>> app = build_app(ServeConfig(model="path/to/model"))  # doctest: +SKIP
    """
    from bpo_integrations.backends import create
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.serve.app import create_app
    from bpo_integrations.serve.engine import Engine

    backend = cast(
        LocalBackend,
        create(
            "local",
            model=config.model,
            adapter=config.adapter,
            precision=config.precision,  # type: ignore[arg-type]
            max_batch_size=config.max_batch_size,
        ),
    )
    engine = Engine(backend, length_rule=config.length_rule)
    return create_app(engine, config, model_id=served_model_id(config))


def run(config: ServeConfig, *, log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C; the requests in flight finish first."""
    import uvicorn

    app = build_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        # typed int, but uvicorn hands it to asyncio.wait_for, which takes any seconds
        timeout_graceful_shutdown=config.graceful_shutdown_s,  # type: ignore[arg-type]
    )


@contextmanager
def serve_in_thread(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL, stop on exit.

    For tests and notebooks: a real server on a real socket (``port=0``: a free one).

    Example:
        >>> with serve_in_thread(build_app(ServeConfig(model="path"))) as url:  # doctest: +SKIP
        ...     InferenceClient(url).text_generation("Tell me about Harry Potter")
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    with uvicorn_in_thread(config, "bpo serve", startup_timeout) as url:
        yield url
