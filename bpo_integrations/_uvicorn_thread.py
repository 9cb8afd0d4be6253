"""A uvicorn server in a background thread, for ``bpo serve``'s and ``bpo proxy``'s tests and
notebooks (the ``serve`` and ``proxy`` extras bring uvicorn)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn


@contextmanager
def uvicorn_in_thread(config: uvicorn.Config, name: str, startup_timeout: float) -> Iterator[str]:
    """Serve ``config`` in a daemon thread; yield its base URL once it listens, stop on exit.

    ``name`` (``bpo serve``, ``bpo proxy``) names the thread and the error when it does not start.
    """
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, name=name.replace(" ", "-") + "-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"{name} did not start on {config.host}:{config.port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
