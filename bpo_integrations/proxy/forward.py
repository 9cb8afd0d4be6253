"""Forwarding to the upstream over one shared ``AsyncClient``, streamed both ways.

The client is httpx2's (pydantic's maintained fork of httpx, same API; huggingface_hub>=2 uses
it too): httpcore 1.0's connection pool does work quadratic in its open connections on every
request, and under a burst of concurrent streams it held the proxy's event loop long enough for
connects to time out. httpx2's pool is linear.

The upstream's answer goes back as it comes: its status, its headers (less the hop-by-hop ones)
and its raw bytes, chunk by chunk, never buffered or decoded. An upstream that breaks off mid-answer
breaks the client's connection too, so that the client sees a cut answer rather than a short one
that looks complete. The proxy answers on its own only when there is no upstream answer at all:
502 (unreachable), 504 (timeout), in OpenAI's error shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import anyio
import httpx2
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Send

from bpo_integrations.proxy.config import ProxyConfig, redact_url
from bpo_integrations.proxy.metrics import ProxyMetrics

logger = logging.getLogger("bpo_integrations.proxy")

# RFC 9110 section 7.6.1, plus what httpx sets itself (host, length) and the proxy's own header.
_REQUEST_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-bpo",
    }
)
_RESPONSE_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def error_response(
    status: int, message: str, error_type: str, code: str | None = None
) -> JSONResponse:
    """An answer of the proxy's own, in OpenAI's error shape."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class Upstream:
    """The upstream server: one connection pool, and the request and response header rules.

    ``Authorization`` upstream: ``Bearer <upstream_api_key>`` when one is configured; otherwise
    the client's own header, except when it carried the proxy's key (``--api-key``), which never
    leaves the proxy.
    """

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.label = redact_url(config.upstream_base)
        self._connect_s = min(10.0, config.upstream_timeout)
        timeout = httpx2.Timeout(config.upstream_timeout, connect=self._connect_s)
        limits = httpx2.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        self.client = httpx2.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
        key = config.upstream_api_key
        self._upstream_auth = b"" if key is None else f"Bearer {key}".encode()

    async def aclose(self) -> None:
        await self.client.aclose()

    def request_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The client's headers (ASGI's lower-case bytes) as they go upstream."""
        replace_auth = self.config.upstream_api_key is not None or self.config.api_key is not None
        forwarded: list[tuple[bytes, bytes]] = []
        has_encoding = False
        for name, value in headers:
            if name in _REQUEST_DROPPED or (replace_auth and name == b"authorization"):
                continue
            has_encoding = has_encoding or name == b"accept-encoding"
            forwarded.append((name, value))
        if not has_encoding:  # else httpx asks for gzip, and the client would get it raw
            forwarded.append((b"accept-encoding", b"identity"))
        if self.config.upstream_api_key is not None:
            forwarded.append((b"authorization", self._upstream_auth))
        return forwarded

    async def forward(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send the request upstream and return the response that streams its answer back."""
        url = self.config.upstream_url(path)
        if query:
            url += "?" + query.decode("latin-1")
        request = self.client.build_request(
            method, url, headers=self.request_headers(headers), content=body
        )
        sent = time.perf_counter()
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException as error:
            return self._failed(extra_headers, 504, "timeout", self._timeout_message(error))
        except httpx2.HTTPError as error:
            return self._failed(
                extra_headers,
                502,
                "unreachable",
                f"cannot reach the upstream {self.label}: {type(error).__name__}: {error}",
            )
        self.metrics.upstream_headers_duration.observe(time.perf_counter() - sent)
        return UpstreamResponse(self, response, path, extra_headers or {})

    def _timeout_message(self, error: httpx2.TimeoutException) -> str:
        if isinstance(error, httpx2.ConnectTimeout):
            return f"could not connect to the upstream {self.label} within {self._connect_s:g}s"
        if isinstance(error, httpx2.PoolTimeout):
            return (
                f"all {self.config.max_connections} connections to the upstream {self.label} "
                f"stayed busy for {self.config.upstream_timeout:g}s (--max-connections)"
            )
        return (
            f"the upstream {self.label} did not answer within "
            f"{self.config.upstream_timeout:g}s ({type(error).__name__})"
        )

    def _failed(
        self, headers: Mapping[str, str] | None, status: int, kind: str, message: str
    ) -> Response:
        logger.warning("%s", message)
        self.metrics.upstream_errors.labels(kind=kind).inc()
        error_type = "upstream_timeout" if status == 504 else "upstream_unavailable"
        response = error_response(status, message, error_type)
        response.headers.update(headers or {})
        return response


class UpstreamResponse(StreamingResponse):
    """The upstream's answer, relayed chunk by chunk as its bytes arrive."""

    def __init__(
        self,
        upstream: Upstream,
        response: httpx2.Response,
        path: str,
        extra_headers: Mapping[str, str],
    ) -> None:
        self.upstream = upstream
        self.response = response
        self.path = path
        self.broken: BaseException | None = None
        super().__init__(response.aiter_raw(), status_code=response.status_code)
        self.raw_headers = [  # the upstream's header bytes as they came
            (name.lower(), value)
            for name, value in response.headers.raw
            if name.lower() not in _RESPONSE_DROPPED
        ]
        self.raw_headers += [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in extra_headers.items()
        ]

    async def stream_response(self, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            try:
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx2.HTTPError as error:
                self.broken = error
                self.upstream.metrics.upstream_errors.labels(kind="broken").inc()
                logger.warning(
                    "the upstream %s broke off its answer to %s: %s: %s; cutting the client's "
                    "connection too",
                    self.upstream.label,
                    self.path,
                    type(error).__name__,
                    error,
                )
                return  # an unfinished response: the server closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):  # also when the client left (cancelled)
                await self.response.aclose()
