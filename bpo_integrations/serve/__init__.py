"""``bpo serve``: TGI's HTTP API on a local transformers model, with dynamic batching.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client, and the ``local`` extra).
Submodules import their dependencies; this package itself imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpo_integrations._lazy import lazy_getattr
from bpo_integrations.serve.config import ServeConfig

if TYPE_CHECKING:
    from bpo_integrations.serve.app import create_app
    from bpo_integrations.serve.engine import Engine
    from bpo_integrations.serve.server import build_app, run, serve_in_thread

_LAZY = {
    "create_app": "bpo_integrations.serve.app",
    "Engine": "bpo_integrations.serve.engine",
    "build_app": "bpo_integrations.serve.server",
    "run": "bpo_integrations.serve.server",
    "serve_in_thread": "bpo_integrations.serve.server",
}

__all__ = ["Engine", "ServeConfig", "build_app", "create_app", "run", "serve_in_thread"]


__getattr__ = lazy_getattr(__name__, _LAZY)
