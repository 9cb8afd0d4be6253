"""``bpo proxy``: an OpenAI-compatible proxy that puts BPO in front of any upstream.

Change an app's base URL to the proxy's and every chat request's newest user message is rewritten
by :class:`~bpo_integrations.BPOOptimizer` on its way to the upstream (OpenAI, vLLM, SGLang,
Ollama, llama.cpp, ``bpo serve``); everything else passes through untouched, streams stay
streams, and an optimizer failure sends the original request (fail-open).

``bpo_integrations.proxy.rewrite`` and ``.outcome`` need no web framework (the LiteLLM callback
uses them); the app needs the ``proxy`` extra: ``pip install 'bpo-integrations[proxy]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpo_integrations._lazy import lazy_getattr
from bpo_integrations.proxy.config import ProxyConfig
from bpo_integrations.proxy.outcome import Outcome
from bpo_integrations.proxy.rewrite import Skip

if TYPE_CHECKING:
    from bpo_integrations.proxy.app import create_app
    from bpo_integrations.proxy.server import run, serve_in_thread

_LAZY = {
    "create_app": "bpo_integrations.proxy.app",
    "run": "bpo_integrations.proxy.server",
    "serve_in_thread": "bpo_integrations.proxy.server",
}

__all__ = ["Outcome", "ProxyConfig", "Skip", "create_app", "run", "serve_in_thread"]


__getattr__ = lazy_getattr(__name__, _LAZY)
