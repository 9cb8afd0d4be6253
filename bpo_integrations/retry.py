"""The one retry policy of remote calls, for the optimizer and the trainer alike (tenacity).

A call that fails with a transient error (:data:`TRANSIENT_STATUS`, a dropped connection: our
:class:`~bpo_integrations.errors.TransientBackendError` and
:class:`~bpo_integrations.errors.BackendUnavailableError`, and ``openai``'s own errors of those
kinds) is tried again, at most ``max_retries`` times, after the server's ``Retry-After`` when it
sent one, else after an exponential backoff (with full jitter: a random wait between 0 and
``initial_wait * 2 ** (retry - 1)``, so that concurrent callers do not retry in step). Given a
``deadline``, a wait that would pass it raises
:class:`~bpo_integrations.errors.OptimizationTimeoutError` at once instead.

Example:
    >>> import asyncio
    >>> answers = iter([TransientBackendError("busy", retry_after=0.0), "done"])
    >>> async def flaky() -> str:
    ...     answer = next(answers)
    ...     if isinstance(answer, Exception):
    ...         raise answer
    ...     return answer
    >>> asyncio.run(RetryPolicy(max_retries=2).call(flaky))
    'done'
"""

from __future__ import annotations

import email.utils
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from bpo_integrations.errors import (
    BackendUnavailableError,
    OptimizationTimeoutError,
    TransientBackendError,
)

if TYPE_CHECKING:
    from tenacity import AsyncRetrying, RetryCallState

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 502, 503, 504})
"""HTTP statuses worth another try: timeouts, conflicts, rate limits, a busy or restarting server
(a 500 is the server's bug: not retried, except by callers that say so)."""


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


def retry_after(error: BaseException | None) -> float | None:
    """The server's ``Retry-After`` in seconds, from our errors' ``retry_after`` or the header of
    a client error's ``response`` (``openai``, ``httpx``); ``None`` when there is none."""
    hinted = getattr(error, "retry_after", None)
    if isinstance(hinted, int | float):
        return float(hinted)
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    return parse_retry_after(headers.get("retry-after")) if headers is not None else None


def is_transient(error: BaseException, statuses: frozenset[int] = TRANSIENT_STATUS) -> bool:
    """Whether ``error`` is worth another try: our transient and unavailable errors, and (when
    ``openai`` is in use) its errors with a status in ``statuses``, connection errors and
    malformed answers."""
    if isinstance(error, TransientBackendError | BackendUnavailableError):
        return True
    openai = sys.modules.get("openai")  # an openai error exists only once openai is imported
    if openai is None:
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in statuses
    return isinstance(error, openai.APIConnectionError | openai.APIResponseValidationError)


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote call is retried: see the module docstring.

    ``max_backoff`` caps the backoff (default ``max_wait``), ``max_wait`` every wait, a server's
    ``Retry-After`` included. ``retry_on`` decides which errors are retried (default
    :func:`is_transient`); an error it rejects, or the last one, is raised as it is.
    """

    max_retries: int
    max_wait: float = 60.0
    initial_wait: float = 0.5
    max_backoff: float | None = None
    jitter: bool = True
    retry_on: Callable[[BaseException], bool] = is_transient

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_wait < 0 or self.initial_wait < 0:
            raise ValueError("max_retries, max_wait and initial_wait must be >= 0")

    def wait(self, state: RetryCallState) -> float:
        """Seconds before the next try: the server's hint, else the backoff; capped."""
        hinted = retry_after(state.outcome.exception() if state.outcome else None)
        if hinted is not None:
            return min(hinted, self.max_wait)
        cap = min(self.max_wait, math.inf if self.max_backoff is None else self.max_backoff)
        backoff = min(self.initial_wait * 2 ** (state.attempt_number - 1), cap)
        return random.uniform(0, backoff) if self.jitter else backoff

    def retrying(
        self,
        *,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
        deadline: float | None = None,
    ) -> AsyncRetrying:
        """The tenacity ``AsyncRetrying`` of this policy; ``before_sleep`` runs before each
        wait (to count the retries); ``deadline`` is a :func:`time.perf_counter` time."""
        from tenacity import AsyncRetrying, retry_if_exception

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.max_retries:
                return True
            return deadline is not None and state.upcoming_sleep >= deadline - time.perf_counter()

        def give_up(state: RetryCallState) -> NoReturn:
            error = state.outcome.exception() if state.outcome else None
            assert error is not None  # tenacity gives up only after a failed attempt
            if state.attempt_number <= self.max_retries and deadline is not None:
                left = deadline - time.perf_counter()
                raise OptimizationTimeoutError(
                    f"retry in {state.upcoming_sleep:.2f}s would exceed the latency budget "
                    f"({left:.2f}s left)"
                ) from error
            raise error

        return AsyncRetrying(
            stop=stop,
            wait=self.wait,
            retry=retry_if_exception(self.retry_on),
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
        deadline: float | None = None,
    ) -> T:
        """``await fn()``, tried again under this policy."""
        async for attempt in self.retrying(before_sleep=before_sleep, deadline=deadline):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover - give_up raises the last error
