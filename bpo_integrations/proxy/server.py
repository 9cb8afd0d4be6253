"""Serve the proxy with uvicorn: in the foreground (``bpo proxy``) or in a thread (tests).

SIGTERM (or Ctrl-C) stops accepting connections and lets the requests in flight finish, streams
included (at most ``graceful_shutdown_s``): uvicorn's graceful shutdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from bpo_integrations._uvicorn_thread import uvicorn_in_thread
from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.proxy.app import create_app
from bpo_integrations.proxy.config import ProxyConfig

if TYPE_CHECKING:
    import uvicorn


def _uvicorn_config(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str,
    *,
    graceful_shutdown_s: float | None = None,
) -> uvicorn.Config:
    import uvicorn

    # The upstream's own Date and Server headers go through; uvicorn adds none of its own.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        date_header=False,
        backlog=4096,
        # typed int, but uvicorn hands it to asyncio.timeout, which takes any seconds
        timeout_graceful_shutdown=graceful_shutdown_s,  # type: ignore[arg-type]
    )


def run(
    config: ProxyConfig,
    optimizer: BPOOptimizer | None,
    *,
    log_level: str = "info",
    graceful_shutdown_s: float = 30.0,
) -> None:
    """Serve until SIGTERM or Ctrl-C; the requests in flight finish first."""
    import uvicorn

    app = create_app(config, optimizer)
    settings = _uvicorn_config(
        app,
        config.host,
        config.port,
        log_level,
        graceful_shutdown_s=graceful_shutdown_s,
    )
    uvicorn.Server(settings).run()


@contextmanager
def serve_in_thread(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL, stop on exit.

    For tests and notebooks: a real server on a real socket (``port=0``: a free one).

    Example:
        >>> import httpx
        >>> app = create_app(ProxyConfig(upstream="http://localhost:8000/v1"), None)
        >>> with serve_in_thread(app) as url:
        ...     httpx.get(url + "/health").json()
        {'status': 'ok'}
    """
    with uvicorn_in_thread(
        _uvicorn_config(app, host, port, "warning"), "bpo proxy", startup_timeout
    ) as url:
        yield url
