"""What the in-process optimizer needs from an inference engine, engine-neutral.

An engine takes token ids and decoding parameters and batches the requests it is given
(continuous batching, sampling, stop strings and minimum lengths are the engine's job). Requests
are submitted from any thread and read as a stream of new tokens or as one completion, from sync
or async code. :class:`~bpo_integrations.inference.openvino.OpenVINOEngine` implements it; another
engine joins by implementing :class:`InferenceEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bpo_integrations.settings import FinishReason


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request. Defaults decode greedily with no penalty."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}"
            )


@dataclass(frozen=True)
class TokenStep:
    """Tokens a request produced since its previous step (with their log-probabilities)."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A finished request. ``stop`` is the stop string that ended it (it is part of the tokens)."""

    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    logprobs: tuple[float, ...] = ()
    stop: str | None = None


def split_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``(text before the stop string, the stop)`` for a completion that a stop string ended.

    Engines check stop strings on the decoded text and may drop the token that completed the
    match, so the text can end with only the start of the stop string, or hold all of it.

    Example:
        >>> split_at_stop("Rewrite it.[KE", ("[KE",))
        ('Rewrite it.', '[KE')
        >>> split_at_stop("Rewrite it.[K", ("[KE",))
        ('Rewrite it.', '[KE')
    """
    found = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    if found:
        position, stop = min(found)
        return text[:position], stop
    best: tuple[int, str | None] = (0, None)
    for stop in stops:
        for size in range(min(len(stop), len(text)), 0, -1):
            if text.endswith(stop[:size]):
                best = max(best, (size, stop), key=lambda pair: pair[0])
                break
    size, partial = best
    return (text[: len(text) - size] if size else text), partial


class EngineClosedError(RuntimeError):
    """The engine was closed before the request finished."""


class EngineRequest:
    """One submitted request: read it as it streams, or wait for its completion.

    The engine's thread calls :meth:`_push` and :meth:`_finish`; consumers on any thread or event
    loop read with :meth:`steps`, :meth:`asteps`, :meth:`result` or :meth:`aresult`.
    """

    def __init__(self, request_id: int, prompt_tokens: int) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._condition = threading.Condition()
        self._steps: list[TokenStep] = []
        self._completion: Completion | None = None
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self._completion is not None or self._error is not None

    def cancel(self) -> None:
        """Ask the engine to stop this request; its consumers see the tokens made so far."""
        self.cancelled = True

    # -- written by the engine ------------------------------------------------------------------

    def _push(self, step: TokenStep) -> None:
        with self._condition:
            self._steps.append(step)
            self._condition.notify_all()
        self._wake()

    def _finish(self, completion: Completion | None, error: BaseException | None = None) -> None:
        with self._condition:
            self._completion, self._error = completion, error
            self._condition.notify_all()
        self._wake()

    def _wake(self) -> None:
        for loop, event in list(self._waiters):
            with contextlib.suppress(RuntimeError):  # a closed loop: its consumer is gone
                loop.call_soon_threadsafe(event.set)

    # -- read by consumers ----------------------------------------------------------------------

    def steps(self, timeout: float | None = None) -> Iterator[TokenStep]:
        """The steps as they come, until the request finishes (raises its error, if any)."""
        index = 0
        while True:
            with self._condition:
                ready = self._condition.wait_for(self._has_news(index), timeout)
                if not ready:
                    raise TimeoutError(f"no tokens within {timeout}s")
                fresh, index = self._steps[index:], len(self._steps)
                finished = self.done and not fresh
            yield from fresh
            if finished:
                if self._error is not None:
                    raise self._error
                return

    def _has_news(self, index: int) -> Callable[[], bool]:
        return lambda: len(self._steps) > index or self.done

    async def asteps(self) -> AsyncIterator[TokenStep]:
        """Async :meth:`steps`; never blocks the event loop."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        self._waiters.append(waiter)
        index = 0
        try:
            while True:
                event.clear()
                with self._condition:
                    fresh, index = self._steps[index:], len(self._steps)
                    finished = self.done and not fresh
                for step in fresh:
                    yield step
                if finished:
                    if self._error is not None:
                        raise self._error
                    return
                if not fresh:
                    await event.wait()
        finally:
            self._waiters.remove(waiter)

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the completion (raises the request's error, or ``TimeoutError``)."""
        with self._condition:
            if not self._condition.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"no completion within {timeout}s")
        return self._outcome()

    async def aresult(self) -> Completion:
        """Async :meth:`result`; never blocks the event loop."""
        async for _ in self.asteps():
            pass
        return self._outcome()

    def _outcome(self) -> Completion:
        if self._error is not None:
            raise self._error
        assert self._completion is not None
        return self._completion


class InferenceEngine(Protocol):
    """A loaded model that batches concurrent requests. Every method is safe from any thread."""

    eos_token_ids: tuple[int, ...]
    max_positions: int | None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

    @property
    def has_chat_template(self) -> bool: ...

    @property
    def max_token_bytes(self) -> int:
        """The UTF-8 length of the tokenizer's longest token."""
        ...

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> EngineRequest: ...

    @property
    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...
