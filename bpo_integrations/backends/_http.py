"""Helpers shared by the HTTP backends (no client library imported here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, TypeVar

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
