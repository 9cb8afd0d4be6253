"""Prometheus metrics of ``bpo serve``, exposed as text on ``GET /metrics``.

Each app owns its registry, so that several servers (or tests) in one process do not share counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bpo_integrations.serve.engine import Engine

_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """Requests, queue length, batch sizes, tokens and latencies of one server."""

    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.routes = frozenset(routes)
        self.requests = Counter(
            "bpo_serve_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "bpo_serve_request_duration_seconds",
            "Time from request to the last byte of the answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_size = Gauge(
            "bpo_serve_queue_size",
            "Generation requests admitted and not yet answered (waiting or generating).",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bpo_serve_batch_size",
            "Requests per batched generation.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.input_tokens = Histogram(
            "bpo_serve_input_tokens",
            "Prompt length of each generation request, in tokens.",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Histogram(
            "bpo_serve_generated_tokens",
            "New tokens generated per request.",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generation_duration = Histogram(
            "bpo_serve_generation_duration_seconds",
            "Time from admission to the last token of a generation (queueing included).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "bpo_serve_time_to_first_token_seconds",
            "Time from admission to the first streamed token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def route_label(self, path: str) -> str:
        """The path when it is one of ours; ``other`` keeps scanners from inflating cardinality."""
        return path if path in self.routes else "other"


class MetricsMiddleware:
    """ASGI middleware that counts every HTTP answer and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = self.metrics.route_label(scope.get("path", ""))
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.metrics.requests.labels(route=route, status=str(status)).inc()
                self.metrics.request_duration.labels(route=route).observe(
                    time.perf_counter() - started
                )

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record()


class EngineStats:
    """A Prometheus collector over the engine's counters, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.engine.stats
        steps = CounterMetricFamily(
            "bpo_serve_engine_steps", "Scheduler steps the engine ran (each decodes every request)."
        )
        steps.add_metric([], stats.get("steps", 0))
        requests = CounterMetricFamily("bpo_serve_engine_requests", "Requests given to the engine.")
        requests.add_metric([], stats.get("requests", 0))
        generated = CounterMetricFamily(
            "bpo_serve_engine_generated_tokens", "Tokens the engine generated."
        )
        generated.add_metric([], stats.get("generated_tokens", 0))
        largest = GaugeMetricFamily(
            "bpo_serve_max_batch_size", "The most requests the engine decoded together so far."
        )
        largest.add_metric([], stats.get("max_running", 0))
        yield from (steps, requests, generated, largest)

    def describe(self) -> list[Any]:
        return []
