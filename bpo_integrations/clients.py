"""Async clients, one per running event loop, and closing them from sync or async code.

An async HTTP client's connection pool belongs to the loop that made it; making a client per call
instead costs a TLS context and a new connection every time. The HTTP backends and the trainer's
chat models keep their clients here.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, Generic, TypeVar

C = TypeVar("C")


class PerLoopClients(Generic[C]):
    """One async client per running event loop, made on first use and reused after."""

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

    def drain(self) -> list[tuple[asyncio.AbstractEventLoop, C]]:
        """Take every client out, with its loop (to close them: :func:`close_on_their_loops`)."""
        with self._lock:
            pairs = list(self._clients.items())
            self._clients.clear()
        return pairs


_closing: set[asyncio.Task[Any]] = set()


def close_on_their_loops(
    pairs: Sequence[tuple[asyncio.AbstractEventLoop, C]],
    aclose: Callable[[C], Coroutine[Any, Any, Any]],
) -> None:
    """Close async clients from synchronous code, each on the loop its connections belong to.

    A loop at rest (the sync API's own loop of a thread) runs the close; a loop running in another
    thread is handed it; the caller's own running loop gets it as a task. A client whose loop is
    closed already cannot be closed any more: its connections went with the loop.
    """
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, client in pairs:
        if loop.is_closed():
            continue
        if loop is current:
            task = loop.create_task(aclose(client))
            _closing.add(task)
            task.add_done_callback(_closing.discard)
            continue
        with suppress(Exception):
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(aclose(client), loop).result(timeout=5)
            elif current is None:
                loop.run_until_complete(aclose(client))
            else:  # this thread runs a loop already: run the one at rest from another thread
                with ThreadPoolExecutor(max_workers=1) as pool:
                    pool.submit(close_on_their_loops, [(loop, client)], aclose).result(timeout=5)


async def aclose_on_their_loops(
    pairs: Sequence[tuple[asyncio.AbstractEventLoop, C]],
    aclose: Callable[[C], Coroutine[Any, Any, Any]],
) -> None:
    """Async twin of :func:`close_on_their_loops`: awaits the clients of the running loop."""
    current = asyncio.get_running_loop()
    for loop, client in pairs:
        if loop is current:
            with suppress(Exception):
                await aclose(client)
        elif not loop.is_closed():
            await asyncio.to_thread(close_on_their_loops, [(loop, client)], aclose)
