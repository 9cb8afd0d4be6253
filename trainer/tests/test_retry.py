"""The trainer's one retry policy: what is retried, how often, and how long it waits."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from bpo_trainer.retry import is_transient
from tenacity import RetryCallState

from bpo_integrations.errors import BackendError, BackendUnavailableError, TransientBackendError
from bpo_integrations.retry import RetryPolicy, retry_after


def _status_error(status: int, retry_after_header: str | None = None) -> openai.APIStatusError:
    headers = {"retry-after": retry_after_header} if retry_after_header is not None else {}
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    return openai.APIStatusError("failed", response=response, body=None)


def _flaky(errors: list[BaseException]) -> tuple[list[float], object]:
    calls: list[float] = []

    async def fn() -> str:
        calls.append(time.monotonic())
        if errors:
            raise errors.pop(0)
        return "ok"

    return calls, fn


def test_transient_errors_are_the_documented_ones() -> None:
    assert is_transient(TransientBackendError("busy"))
    assert is_transient(BackendUnavailableError("refused"))
    assert not is_transient(BackendError("bad request"))
    assert [s for s in (400, 401, 404, 408, 409, 425, 429, 500, 501, 503) if is_transient(
        _status_error(s))] == [408, 409, 425, 429, 500, 503]  # fmt: skip
    request = httpx.Request("POST", "http://127.0.0.1/v1")
    assert is_transient(openai.APIConnectionError(request=request))
    assert not is_transient(ValueError("a bug"))


def test_retry_after_from_either_error_kind() -> None:
    assert retry_after(TransientBackendError("busy", retry_after=2.5)) == 2.5
    assert retry_after(_status_error(429, "3")) == 3.0
    assert retry_after(_status_error(429, "soon")) is None
    assert retry_after(_status_error(503)) is None
    assert retry_after(None) is None


def test_retries_until_success_then_gives_up_with_the_last_error() -> None:
    calls, fn = _flaky([TransientBackendError("1"), BackendUnavailableError("2")])
    assert asyncio.run(RetryPolicy(2, initial_wait=0.001).call(fn)) == "ok"
    assert len(calls) == 3

    calls, fn = _flaky([TransientBackendError(str(i)) for i in range(5)])
    with pytest.raises(TransientBackendError, match=r"^2$"):
        asyncio.run(RetryPolicy(2, initial_wait=0.001).call(fn))
    assert len(calls) == 3

    calls, fn = _flaky([BackendError("not transient")])
    with pytest.raises(BackendError):
        asyncio.run(RetryPolicy(5).call(fn))
    assert len(calls) == 1


def test_the_server_hint_is_honoured_and_capped() -> None:
    calls, fn = _flaky([TransientBackendError("busy", retry_after=0.2)])
    assert asyncio.run(RetryPolicy(1, initial_wait=0.0).call(fn)) == "ok"
    assert calls[1] - calls[0] >= 0.2

    calls, fn = _flaky([_status_error(429, "30")])
    retries: list[int] = []
    policy = RetryPolicy(1, max_wait=0.05)
    asyncio.run(policy.call(fn, before_sleep=lambda state: retries.append(state.attempt_number)))
    assert calls[1] - calls[0] < 5 and retries == [1]


def _state(policy: RetryPolicy, attempt: int, error: BaseException) -> RetryCallState:
    state = RetryCallState(policy.retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_backoff_is_jittered_below_its_exponential_bound() -> None:
    policy = RetryPolicy(3, initial_wait=0.04, max_wait=0.1)
    for attempt, bound in ((1, 0.04), (2, 0.08), (3, 0.1), (6, 0.1)):
        waits = [
            policy.wait(_state(policy, attempt, TransientBackendError("x"))) for _ in range(50)
        ]
        assert all(0 <= wait <= bound for wait in waits) and len(set(waits)) > 1
    hinted = TransientBackendError("x", retry_after=0.07)
    assert policy.wait(_state(policy, 1, hinted)) == 0.07
    assert policy.wait(_state(policy, 1, _status_error(429, "30"))) == 0.1
    with pytest.raises(ValueError, match=">= 0"):
        RetryPolicy(-1)
