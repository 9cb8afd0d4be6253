"""Prometheus metrics of ``bpo proxy``, exposed as text on ``GET /metrics``.

Each app owns its registry, so that several proxies (or tests) in one process do not share counts.
Labels take values from small fixed sets (routes, status codes, outcome words), never from what a
client sends.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bpo_integrations.proxy.outcome import Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LONG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ProxyMetrics:
    """Requests, optimizer outcomes and latencies, upstream failures of one proxy."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bpo_proxy_requests",
            "Requests answered, by route and status code (the upstream's, or the proxy's own).",
            ["route", "status"],
            registry=self.registry,
        )
        self.optimizations = Counter(
            "bpo_proxy_optimizations",
            "Prompts handled, by outcome (optimized, fallback, skipped) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.optimizer_duration = Histogram(
            "bpo_proxy_optimizer_duration_seconds",
            "Time spent optimizing the prompt of a request (fallbacks included).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_headers_duration = Histogram(
            "bpo_proxy_upstream_response_seconds",
            "Time from sending a request upstream to the upstream's response headers.",
            buckets=_LONG_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "bpo_proxy_request_duration_seconds",
            "Time from a request to the last byte of its answer, by route.",
            ["route"],
            buckets=_LONG_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "bpo_proxy_upstream_errors",
            "Upstream failures the proxy saw: unreachable, timeout, or broken mid-answer.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bpo_proxy_requests_in_flight",
            "Requests received and not yet answered to their last byte.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @staticmethod
    def route_label(path: str) -> str:
        """The path when it is one of the OpenAI routes; ``other`` keeps cardinality bounded."""
        return path if path in ROUTES else "other"

    def record_outcome(self, outcome: Outcome, seconds: float | None) -> None:
        reason = outcome.skipped.value if outcome.skipped is not None else outcome.fallback_kind
        self.optimizations.labels(outcome=outcome.label, reason=reason or "").inc()
        if seconds is not None:
            self.optimizer_duration.observe(seconds)
