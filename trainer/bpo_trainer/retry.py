"""The one retry policy of the trainer's remote calls (construct, eval, drpo, drpo-eval).

A call that fails with a transient error (HTTP 408/409/425/429/5xx, a dropped connection, a
malformed answer) is tried again, at most ``max_retries`` times, after the server's
``Retry-After`` when it sent one, else after an exponential backoff with full jitter (a random
wait between 0 and ``initial_wait * 2 ** (retry - 1)``, so that concurrent callers do not retry in
step); no wait is longer than ``max_wait``. Built on tenacity.

Example:
    >>> import asyncio
    >>> from bpo_integrations.errors import TransientBackendError
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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from bpo_integrations.errors import BackendUnavailableError, TransientBackendError

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: timeouts, conflicts, rate limits, an overloaded server."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth another try: ``bpo_integrations``' transient and unavailable
    errors (what the chat clients raise), and ``openai``'s transient statuses, connection
    errors and malformed answers (what the ``construct`` client raises)."""
    if isinstance(error, TransientBackendError | BackendUnavailableError):
        return True
    try:
        import openai
    except ImportError:  # pragma: no cover - openai is a dependency of the trainer
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in TRANSIENT_STATUS
    return isinstance(error, openai.APIConnectionError | openai.APIResponseValidationError)


def retry_after(error: BaseException | None) -> float | None:
    """The server's ``Retry-After`` in seconds, from a ``bpo_integrations`` error's
    ``retry_after`` or an ``openai`` error's header; ``None`` when there is none."""
    hinted = getattr(error, "retry_after", None)
    if isinstance(hinted, int | float):
        return float(hinted)
    response = getattr(error, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote call is retried: see the module docstring.

    ``retry_on`` decides which errors are retried (default :func:`is_transient`); an error it
    rejects, or the last one, is raised as it is.
    """

    max_retries: int
    max_wait: float = 60.0
    initial_wait: float = 0.5
    retry_on: Callable[[BaseException], bool] = is_transient

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_wait < 0 or self.initial_wait < 0:
            raise ValueError("max_retries, max_wait and initial_wait must be >= 0")

    def wait(self, state: RetryCallState) -> float:
        """Seconds before the next try: the server's hint, else the jittered backoff; capped."""
        hinted = retry_after(state.outcome.exception() if state.outcome else None)
        if hinted is not None:
            return min(hinted, self.max_wait)
        backoff = wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait)
        return float(backoff(state))

    def retrying(
        self, *, before_sleep: Callable[[RetryCallState], Any] | None = None
    ) -> AsyncRetrying:
        """The tenacity ``AsyncRetrying`` of this policy; ``before_sleep`` runs before each
        wait (to count the retries)."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait,
            retry=retry_if_exception(self.retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
    ) -> T:
        """``await fn()``, tried again under this policy."""
        async for attempt in self.retrying(before_sleep=before_sleep):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True raises the last error
