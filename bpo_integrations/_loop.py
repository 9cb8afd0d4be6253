"""Running the async implementation from the sync API.

A thread with no running event loop runs the coroutine on an event loop of its own, kept for the
thread's next calls: no hop to another thread, which costs a scheduler wake-up (tens to hundreds of
microseconds on a busy machine) on every call. A thread that already runs a loop (a sync call from
async code, a notebook) hands the coroutine to one background loop thread per process and waits.

On the thread's own loop nothing but the sync call runs, and its caller waits for it anyway, so
blocking work may run inline there instead of in a worker thread: :func:`may_block` says when.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import os
import threading
from collections.abc import Awaitable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_local = threading.local()
_shared: contextvars.ContextVar[bool] = contextvars.ContextVar("bpo_loop_shared", default=False)


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


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's own event loop (made on first use; a forked child makes a new one)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or _local.pid != os.getpid():
        loop = asyncio.new_event_loop()
        _local.loop, _local.pid = loop, os.getpid()
    return loop


@atexit.register
def _close_thread_loop() -> None:
    """Close the main thread's own loop at exit (an open one is a ResourceWarning there)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is not None and not loop.is_running() and not loop.is_closed():
        loop.close()


def may_block() -> bool:
    """Whether the running coroutine may block its event loop with a synchronous call.

    True only on the sync API's own loop of this thread (see :func:`run_sync`), outside
    :func:`concurrent` sections: there no other task waits for the loop, and the caller waits
    for the result anyway. On any other loop (the caller's own, the background loop) blocking
    calls belong in a worker thread.
    """
    loop = getattr(_local, "loop", None)
    if loop is None or _shared.get():
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def on_sync_api_loop() -> bool:
    """Whether the running coroutine runs on a loop of the sync API (:func:`run_sync`'s): this
    thread's own loop or the background loop, rather than a loop of the caller's."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return running is getattr(_local, "loop", None) or running is _loop


@contextmanager
def concurrent() -> Iterator[None]:
    """Mark the tasks started inside as running side by side: none of them may block the loop."""
    token = _shared.set(True)
    try:
        yield
    finally:
        _shared.reset(token)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, from synchronous code."""
    if threading.current_thread().name == "bpo-integrations-loop":
        coro.close()
        raise RuntimeError(
            "the sync API was called from inside an async backend: use the async API"
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()
    loop = _thread_loop()
    task = loop.create_task(_stopping(coro, loop))
    try:
        loop.run_forever()
    finally:
        if not task.done():  # interrupted (Ctrl-C): do not leave the task for the next call
            task.cancel()
            with suppress(BaseException):  # its CancelledError
                loop.run_until_complete(task)
        elif not task.cancelled():
            task.exception()  # seen: a Ctrl-C inside the task is already on its way up
    return task.result()


async def _stopping(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    """``coro``, then stop ``loop``: one turn of the loop less than ``run_until_complete``."""
    try:
        return await coro
    finally:
        loop.stop()


async def gather(*awaitables: Awaitable[T]) -> list[T]:
    """``asyncio.gather`` as a coroutine, for ``wait_for`` or a task to run.

    Cancelled, the task retrieves the gather's error; a bare gather under ``wait_for`` leaves it
    to be logged later as "exception was never retrieved".
    """
    return list(await asyncio.gather(*awaitables))
