"""The engine in a process of its own, so that decoding never stalls this process's threads.

OpenVINO GenAI's ``step()`` holds Python's GIL for as long as it computes (tens to hundreds of
milliseconds a step on a CPU), so an engine thread inside the application's process stops its
event loop and every other thread meanwhile. :class:`EngineProcess` runs
:class:`~bpo_integrations.inference.openvino.OpenVINOEngine` in a child process (started with
``python -m bpo_integrations.inference.engine_process``, which never imports the application's
``__main__``) and keeps only the tokenizer here; requests, their tokens and cancellations cross a
socket pair as pickled messages, as vLLM's engine core does.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bpo_integrations.inference.engine import (
    Completion,
    EngineClosedError,
    EngineRequest,
    SamplingParams,
    TokenStep,
)
from bpo_integrations.inference.openvino import OpenVINOTokenizer, TokenizerMethods

_START_TIMEOUT = 600.0
"""Seconds the child may take to load and compile the model before its start counts as failed."""


class EngineProcess(TokenizerMethods):
    """An :class:`~bpo_integrations.inference.openvino.OpenVINOEngine` in a child process.

    Args:
        path: the prepared model folder (see
            :func:`~bpo_integrations.inference.prepare.prepare_model`).
        **options: :class:`~bpo_integrations.inference.openvino.OpenVINOEngine`'s keyword
            arguments (``max_batch_size``, ``kv_cache_gb``, ``prefix_caching``, ...).

    It implements :class:`~bpo_integrations.inference.engine.InferenceEngine`: tokenizing runs in
    this process, generation in the child. The child exits when :meth:`close` is called or when
    this process ends; a child that dies fails its requests with
    :class:`~bpo_integrations.inference.engine.EngineClosedError`.

    Example:
        >>> from bpo_integrations.inference.engine import SamplingParams
        >>> from bpo_integrations.inference.prepare import prepare_model
        >>> engine = EngineProcess(prepare_model().path, max_batch_size=4)  # doctest: +SKIP
        >>> ids = engine.encode("[INST] ... Tell me about Harry Potter [/INST]")  # doctest: +SKIP
        >>> completion = engine.submit(ids, SamplingParams(32)).result()  # doctest: +SKIP
        >>> engine.decode(completion.token_ids)  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.path = Path(path)
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self._connection = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self._requests: dict[int, EngineRequest] = {}
        self._requests_lock = threading.Lock()
        self._ids = itertools.count()
        self._stats: dict[str, int] = {}
        self._closed = False
        try:
            self._send(("start", str(self.path), options))
            self.tokenizer = OpenVINOTokenizer(self.path)
            if not self._connection.poll(_START_TIMEOUT):
                raise RuntimeError(f"the engine process did not start within {_START_TIMEOUT}s")
            kind, *details = self._connection.recv()
        except EOFError:
            self._stop_child()
            raise RuntimeError(
                f"the engine process exited while loading (exit code {self._process.returncode})"
            ) from None
        except BaseException:
            self._stop_child()
            raise
        if kind == "failed":
            self._stop_child()
            raise details[0]
        self.eos_token_ids: tuple[int, ...] = details[0]
        self.max_positions: int | None = details[1]
        self._stats = details[2]
        self._reader = threading.Thread(target=self._read, name="bpo-engine-reader", daemon=True)
        self._reader.start()

    # -- requests (in the child) ----------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> EngineRequest:
        """Hand a request to the child; read it from the returned handle."""
        request = _RemoteRequest(next(self._ids), len(prompt_ids), self._cancel)
        with self._requests_lock:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            self._requests[request.request_id] = request
        try:
            self._send(("submit", request.request_id, [int(i) for i in prompt_ids], params))
        except OSError as error:
            self._forget(request.request_id)
            raise EngineClosedError(f"the engine process is gone: {error}") from error
        return request

    @property
    def pid(self) -> int:
        """The engine process's id."""
        return self._process.pid

    @property
    def stats(self) -> dict[str, int]:
        """The child engine's counters, as of the last request that finished."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop the child; unfinished requests fail with :class:`EngineClosedError`."""
        with self._requests_lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._send(("close",))
        self._reader.join()
        self._stop_child()

    # -- messages -------------------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._connection.send(message)

    def _cancel(self, request_id: int) -> None:
        with contextlib.suppress(OSError):
            self._send(("cancel", request_id))

    def _forget(self, request_id: int) -> EngineRequest | None:
        with self._requests_lock:
            return self._requests.pop(request_id, None)

    def _read(self) -> None:
        while True:
            try:
                kind, request_id, *details = self._connection.recv()
            except (EOFError, OSError):
                break
            if kind == "step":
                with self._requests_lock:
                    request = self._requests.get(request_id)
                if request is not None:
                    request._push(details[0])
            elif kind == "done":
                completion, error, self._stats = details
                request = self._forget(request_id)
                if request is not None:
                    request._finish(completion, error)
        self._fail_unfinished()

    def _fail_unfinished(self) -> None:
        with self._requests_lock:
            closing, self._closed = self._closed, True
            unfinished, self._requests = list(self._requests.values()), {}
        if unfinished:
            code = self._process.poll()
            reason = (
                "the engine was closed"
                if closing
                else f"the engine process exited unexpectedly (exit code {code})"
            )
            for request in unfinished:
                request._finish(None, EngineClosedError(reason))

    def _stop_child(self) -> None:
        self._connection.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class _RemoteRequest(EngineRequest):
    """A request whose engine runs in the child: cancelling it tells the child."""

    def __init__(self, request_id: int, prompt_tokens: int, cancel: Callable[[int], None]) -> None:
        super().__init__(request_id, prompt_tokens)
        self._tell_cancel = cancel

    def cancel(self) -> None:
        if not self.cancelled and not self.done:
            self._tell_cancel(self.request_id)
        super().cancel()


# -- the child --------------------------------------------------------------------------------


class _ForwardedRequest(EngineRequest):
    """The child's handle of a request: it sends what the engine tells it to the parent."""

    def __init__(
        self,
        request_id: int,
        prompt_tokens: int,
        send: Callable[[tuple[Any, ...]], None],
        stats: Callable[[], dict[str, int]],
        requests: dict[int, EngineRequest],
    ) -> None:
        super().__init__(request_id, prompt_tokens)
        self._send, self._snapshot, self._registry = send, stats, requests

    def _push(self, step: TokenStep) -> None:
        self._send(("step", self.request_id, step))

    def _finish(self, completion: Completion | None, error: BaseException | None = None) -> None:
        self._registry.pop(self.request_id, None)
        self._send(("done", self.request_id, completion, _picklable(error), self._snapshot()))


def _picklable(error: BaseException | None) -> BaseException | None:
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def serve(connection: Connection) -> None:
    """The child's side: load the engine, then run what the parent sends until it closes.

    Ctrl-C reaches the whole process group; the child leaves it to the parent, which closes the
    engine (or exits, which the child sees as the end of its socket)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from bpo_integrations.inference.openvino import OpenVINOEngine

    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError):
            connection.send(message)

    try:
        _, path, options = connection.recv()
        engine = OpenVINOEngine(path, **options)
    except EOFError:
        return
    except Exception as error:
        send(("failed", _picklable(error)))
        return
    send(("ready", engine.eos_token_ids, engine.max_positions, engine.stats))
    requests: dict[int, EngineRequest] = {}

    def stats() -> dict[str, int]:
        return engine.stats

    try:
        while True:
            try:
                kind, *details = connection.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if kind == "submit":
                request_id, ids, params = details
                request = _ForwardedRequest(request_id, len(ids), send, stats, requests)
                requests[request_id] = request
                engine.submit_request(request, ids, params)
            elif kind == "cancel":
                cancelled = requests.get(details[0])
                if cancelled is not None:
                    cancelled.cancel()
            elif kind == "close":
                break
    finally:
        engine.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
