"""Helpers shared by the HTTP backends (no client library imported here)."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, NoReturn, TypeVar

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(fn: Callable[[T], R], items: Sequence[T], max_workers: int) -> list[R]:
    """``[fn(item) for item in items]``, in order, on up to ``max_workers`` threads when there
    is more than one item (a single item runs on the calling thread)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(fn, items))


def raise_mapped(
    map_error: Callable[[BaseException, float], BaseException], error: Exception, started: float
) -> NoReturn:
    """Raise ``map_error(error, seconds since started)``: the client's error in our vocabulary."""
    mapped = map_error(error, time.perf_counter() - started)
    if mapped is error:
        raise error
    raise mapped from error


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); ``None`` if absent.

    Example:
        >>> parse_retry_after("1.5"), parse_retry_after(None), parse_retry_after("soon")
        (1.5, None, None)
    """
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class PerLoopClients(Generic[C]):
    """One async client per running event loop, made on first use and reused after.

    An async HTTP client's connection pool belongs to the loop that made it; making a client per
    call instead costs a TLS context and a new connection every time.
    """

    def __init__(self, factory: Callable[[], C]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self) -> C:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._factory()
            return client

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()
