"""Errors the optimizer raises (with ``on_error="raise"``) or records as fallback reasons."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bpo_integrations.result import FallbackReason


class BPOError(Exception):
    """Base class of every error raised by bpo_integrations."""


class BackendError(BPOError):
    """The optimizer backend failed in a way that retrying will not fix (bad request, bad model)."""


class BackendUnavailableError(BackendError):
    """The backend cannot be reached (connection refused, DNS, reset). Retried within the budget."""


class TransientBackendError(BackendError):
    """A failure worth retrying (HTTP 429, 503, a reset). ``retry_after`` is the server's hint."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OptimizationTimeoutError(BPOError, TimeoutError):
    """The optimization did not finish within its latency budget."""


class GuardError(BPOError):
    """The optimizer's output failed a guard (empty, runaway, lost protected content)."""

    def __init__(self, reason: FallbackReason, detail: str = "") -> None:
        super().__init__(reason.message(detail))
        self.reason = reason
        self.detail = detail


def fallback_reason_of(error: BaseException) -> tuple[FallbackReason, str]:
    """The fallback reason a failed optimization records for ``error``, and its detail."""
    import asyncio

    from bpo_integrations.result import FallbackReason

    if isinstance(error, GuardError):
        return error.reason, error.detail
    if isinstance(error, OptimizationTimeoutError | asyncio.TimeoutError):
        return FallbackReason.TIMEOUT, str(error)
    if isinstance(error, TransientBackendError):
        return FallbackReason.BACKEND_OVERLOADED, str(error)
    if isinstance(error, BackendUnavailableError):
        return FallbackReason.BACKEND_UNAVAILABLE, str(error)
    if isinstance(error, BackendError):
        return FallbackReason.BACKEND_ERROR, str(error)
    return FallbackReason.UNEXPECTED_ERROR, f"{type(error).__name__}: {error}"
