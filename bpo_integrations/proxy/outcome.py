"""What BPO did to one request, as typed values, response headers and a metadata record.

Response headers (never the body):

- ``X-BPO-Optimized``: ``true`` when the upstream got the rewrite, else ``false``.
- ``X-BPO-Rewrite``: the rewrite, UTF-8 percent-encoded (RFC 3986: everything but
  ``A-Z a-z 0-9 - . _ ~``; decode with ``urllib.parse.unquote``), at most
  :data:`MAX_REWRITE_HEADER` characters, cut at a character boundary; then
  ``X-BPO-Rewrite-Truncated: true``. Only when optimized.
- ``X-BPO-Fallback-Reason``: why the optimizer fell back, as one word (``timeout``,
  ``backend_unavailable``, ``circuit_open``, ...); the detail goes to the log, not to clients.
- ``X-BPO-Skipped``: why the request was not optimized at all (a :class:`Skip` value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from bpo_integrations.proxy.rewrite import Skip
from bpo_integrations.result import FallbackReason, OptimizationResult

OPTIMIZED = "X-BPO-Optimized"
REWRITE = "X-BPO-Rewrite"
REWRITE_TRUNCATED = "X-BPO-Rewrite-Truncated"
FALLBACK_REASON = "X-BPO-Fallback-Reason"
SKIPPED = "X-BPO-Skipped"

MAX_REWRITE_HEADER = 4096
"""Longest ``X-BPO-Rewrite`` value, in characters: well inside the 8 KiB that common servers,
proxies and clients accept for all headers together."""


def encode_header_text(text: str, limit: int = MAX_REWRITE_HEADER) -> tuple[str, bool]:
    """``text`` percent-encoded in at most ``limit`` characters, and whether it was cut.

    Example:
        >>> encode_header_text("Größe?")
        ('Gr%C3%B6%C3%9Fe%3F', False)
        >>> encode_header_text("Größe?", limit=8)
        ('Gr%C3%B6', True)
    """
    encoded = quote(text, safe="")
    if len(encoded) <= limit:
        return encoded, False
    cut = encoded[:limit]
    tail = cut.rfind("%", max(0, len(cut) - 2))
    if tail != -1:  # an escape cut in half
        cut = cut[:tail]
    whole = unquote_to_bytes(cut).decode("utf-8", errors="ignore")  # drops a half character
    return quote(whole, safe=""), True


@dataclass(frozen=True)
class Outcome:
    """What happened to one request: optimized, fell back (``result`` says why), or skipped.

    Example:
        >>> Outcome(skipped=Skip.OPT_OUT).headers()
        {'X-BPO-Optimized': 'false', 'X-BPO-Skipped': 'opt_out'}
    """

    result: OptimizationResult | None = None
    skipped: Skip | None = None
    error: str | None = None
    """An exception the optimizer raised (``on_error="raise"``): the request went on unchanged."""

    @property
    def optimized(self) -> bool:
        return self.result is not None and not self.result.fell_back and self.error is None

    @property
    def fallback_reason(self) -> str | None:
        """The optimizer's full fallback reason (for logs; headers carry :meth:`fallback_kind`)."""
        if self.error is not None:
            return FallbackReason.UNEXPECTED_ERROR.message(self.error)
        if self.result is not None and self.result.fell_back:
            return self.result.fallback_message or "unknown"
        return None

    @property
    def fallback_kind(self) -> str | None:
        """Why the optimizer fell back, as one word (``timeout``); ``None`` when it did not."""
        if self.error is not None:
            return FallbackReason.UNEXPECTED_ERROR.value
        if self.result is not None and self.result.fell_back:
            reason = self.result.fallback_reason
            return "unknown" if reason is None else reason.value
        return None

    @property
    def label(self) -> str:
        """``optimized``, ``fallback`` or ``skipped`` (a metrics label)."""
        if self.optimized:
            return "optimized"
        return "skipped" if self.skipped is not None else "fallback"

    def headers(self) -> dict[str, str]:
        headers = {OPTIMIZED: "true" if self.optimized else "false"}
        if self.optimized and self.result is not None:
            headers[REWRITE], truncated = encode_header_text(self.result.optimized)
            if truncated:
                headers[REWRITE_TRUNCATED] = "true"
        elif self.skipped is not None:
            headers[SKIPPED] = self.skipped.value
        elif self.fallback_kind is not None:
            headers[FALLBACK_REASON] = self.fallback_kind
        return headers

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (LiteLLM request metadata, logs)."""
        record: dict[str, Any] = {
            "optimized": self.optimized,
            "skipped": None if self.skipped is None else self.skipped.value,
            "fallback_reason": self.fallback_reason,
        }
        if self.result is not None:
            record.update(
                original=self.result.original,
                rewrite=self.result.optimized if self.optimized else None,
                backend=self.result.backend,
                latency_s=self.result.latency_s,
                cached=self.result.cached,
            )
        return record
