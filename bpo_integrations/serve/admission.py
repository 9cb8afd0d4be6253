"""Admission control: at most ``--max-queue`` generation requests at once; the next gets 429."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from bpo_integrations.serve.errors import ClientGone, ServeError
from bpo_integrations.serve.metrics import ServeMetrics

T = TypeVar("T")


class Slot:
    """Room for ``count`` admitted requests; :meth:`release` (idempotent) gives it back."""

    def __init__(self, admission: Admission, count: int) -> None:
        self.admission = admission
        self.count = count
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= self.count
            self.admission.metrics.queue_size.set(self.admission.in_flight)


class Admission:
    """At most ``limit`` generation requests admitted at once; the next one gets HTTP 429."""

    def __init__(self, limit: int, metrics: ServeMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self.metrics = metrics

    def acquire(self, count: int = 1) -> Slot:
        if self.in_flight + count > self.limit:
            raise ServeError(
                429,
                "overloaded",
                f"Model is overloaded: {self.in_flight} requests in flight, the limit is "
                f"{self.limit}. Retry later, or start bpo serve with a larger --max-queue",
                headers={"Retry-After": "1"},
            )
        self.in_flight += count
        self.metrics.queue_size.set(self.in_flight)
        return Slot(self, count)


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (freeing its slot).

    ``work`` is a coroutine (for many generations, :func:`~bpo_integrations._loop.gather`), run as
    a task, which retrieves what it awaited when it is cancelled.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or not task.done():
        raise ClientGone()
    return task.result()
