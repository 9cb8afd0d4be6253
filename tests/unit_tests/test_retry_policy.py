"""The one retry policy (``bpo_integrations.retry``) and the typed fallback reasons it feeds."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bpo_integrations import BPOOptimizer, FallbackReason, OptimizationResult
from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import (
    BackendError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.retry import TRANSIENT_STATUS, RetryPolicy, is_transient, retry_after


def _failing(errors: list[BaseException]):
    calls: list[float] = []

    async def fn() -> str:
        calls.append(time.perf_counter())
        if errors:
            raise errors.pop(0)
        return "ok"

    return calls, fn


def test_a_wait_past_the_deadline_is_a_timeout_at_once() -> None:
    calls, fn = _failing([TransientBackendError("busy", retry_after=5.0)])
    policy = RetryPolicy(3, max_wait=float("inf"))
    started = time.perf_counter()
    with pytest.raises(OptimizationTimeoutError, match="would exceed the latency budget") as info:
        asyncio.run(policy.call(fn, deadline=started + 1.0))
    assert time.perf_counter() - started < 0.5 and len(calls) == 1
    assert isinstance(info.value.__cause__, TransientBackendError)


def test_steady_backoff_and_the_last_error_when_retries_run_out() -> None:
    calls, fn = _failing([TransientBackendError(str(i)) for i in range(3)])
    policy = RetryPolicy(2, initial_wait=0.05, max_backoff=2.0, max_wait=float("inf"), jitter=False)
    with pytest.raises(TransientBackendError, match=r"^2$"):
        asyncio.run(policy.call(fn, deadline=time.perf_counter() + 5))
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1


def test_what_is_transient_and_the_hint() -> None:
    assert {429, 503} <= TRANSIENT_STATUS and 500 not in TRANSIENT_STATUS
    assert is_transient(TransientBackendError("busy")) and not is_transient(BackendError("bad"))
    assert retry_after(TransientBackendError("busy", retry_after=1.5)) == 1.5
    assert retry_after(ValueError("no hint")) is None


def test_the_optimizer_records_the_reason_and_detail_apart() -> None:
    def down(prompt: str) -> str:
        raise BackendError("model not found")

    result = BPOOptimizer(CallableBackend(down)).optimize("hello there")
    assert (result.fallback_reason, result.fallback_detail) == (
        FallbackReason.BACKEND_ERROR,
        "model not found",
    )
    assert result.fallback_reason.is_backend_failure
    record = result.to_dict()
    assert record["fallback_reason"] == "backend_error: model not found"
    assert "fallback_detail" not in record
    plain = OptimizationResult("a", "b", "x", 0.1)
    assert plain.to_dict()["fallback_reason"] is None and plain.fallback_message is None
