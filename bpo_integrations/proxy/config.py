"""The settings of ``bpo proxy``: one dataclass, mirrored option for option by the CLI."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class ProxyConfig:
    """Where ``bpo proxy`` forwards, who may call it, and which requests it leaves alone.

    The optimizer itself is not part of the config: :func:`~bpo_integrations.proxy.create_app`
    takes a :class:`~bpo_integrations.BPOOptimizer`.

    Example:
        >>> config = ProxyConfig(upstream="http://localhost:8000/v1", skip_models=("gpt-4o*",))
        >>> config.upstream_url("/chat/completions")
        'http://localhost:8000/v1/chat/completions'
        >>> config.skips_model("gpt-4o-mini"), config.skips_model("llama-3.1-8b")
        (True, False)
    """

    upstream: str = field(
        metadata={
            "help": "The upstream's OpenAI base URL (what you would give the openai client as "
            "base_url, usually ending in /v1): the proxy's /v1/X goes to UPSTREAM/X."
        }
    )
    upstream_api_key: str | None = field(
        default=None,
        metadata={
            "help": "Sent upstream as 'Authorization: Bearer KEY'. Without it the client's own "
            "Authorization goes upstream, unless it was the proxy's --api-key."
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Require 'Authorization: Bearer KEY' from clients on every route but /health."
        },
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to bind; 0.0.0.0 exposes the proxy to the network."},
    )
    port: int = field(default=8081, metadata={"help": "TCP port; 0 picks a free one."})
    skip_models: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Model names whose requests go upstream unoptimized: shell-style patterns "
            "(gpt-4o*, *embed*), comma-separated or repeated."
        },
    )
    upstream_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds to wait for the upstream's answer to begin and between two of its "
            "chunks (504 when exceeded)."
        },
    )
    max_connections: int = field(
        default=512,
        metadata={"help": "Most connections open to the upstream at once; more requests wait."},
    )

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"the upstream must be an http(s) URL such as http://localhost:8000/v1, "
                f"got {redact_url(self.upstream)!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.upstream_timeout <= 0:
            raise ValueError(f"upstream_timeout must be > 0 seconds, got {self.upstream_timeout}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        for name in ("api_key", "upstream_api_key"):
            key = getattr(self, name)
            if key is not None and (not key.strip() or any(c in key for c in "\r\n")):
                raise ValueError(f"{name} must be a non-empty single-line string")
        patterns = tuple(p.strip() for item in self.skip_models for p in item.split(","))
        object.__setattr__(self, "skip_models", tuple(p for p in patterns if p))

    @property
    def upstream_base(self) -> str:
        """The upstream URL without a trailing slash."""
        return self.upstream.rstrip("/")

    def upstream_url(self, path: str) -> str:
        """The upstream URL for the proxy's ``/v1`` + ``path``."""
        return self.upstream_base + "/" + path.lstrip("/")

    def skips_model(self, model: object) -> bool:
        """Whether requests for ``model`` go upstream unoptimized (``--skip-models``)."""
        if not isinstance(model, str):
            return False
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.skip_models)


def redact_url(url: str) -> str:
    """``url`` without a password in it (``https://user:***@host``), for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
