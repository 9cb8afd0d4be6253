"""One background event loop per process, so that the sync API shares the async implementation."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="bpo-integrations-loop", daemon=True
            )
            thread.start()
            _loop, _pid = loop, os.getpid()
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result in the calling thread."""
    if threading.current_thread().name == "bpo-integrations-loop":
        coro.close()
        raise RuntimeError(
            "the sync API was called from inside an async backend: use the async API"
        )
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()
