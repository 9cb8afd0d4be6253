"""The optimizer never breaks the caller: real backends, real clients, scripted faults on 127.0.0.1.

Every scenario runs against both HTTP backends (TGI through huggingface_hub, and the OpenAI chat
API through openai).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("openai")

from huggingface_hub import constants as hf_constants

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import OpenAIBackend, TGIBackend
from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import (
    BackendError,
    BackendUnavailableError,
    GuardError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.testing.servers import Fault, ScriptedServer, unused_url

PROMPT = "How do I sort a list in Python?"
REWRITE = "How do I sort a list in Python? Show sorted() and list.sort() with examples."

MakeBackend = Callable[[str], Backend]


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test config sets HF_HUB_OFFLINE=1, which makes InferenceClient refuse even 127.0.0.1.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(params=["tgi", "openai"])
def make_backend(request: pytest.FixtureRequest) -> MakeBackend:
    if request.param == "tgi":
        return TGIBackend
    return lambda url: OpenAIBackend("scripted-bpo", base_url=url + "/v1")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(lambda _: REWRITE) as srv:
        yield srv


def optimize(optimizer: BPOOptimizer) -> tuple[Any, float]:
    started = time.perf_counter()
    result = optimizer.optimize(PROMPT)
    return result, time.perf_counter() - started


def assert_fell_back(result: Any, reason: str) -> None:
    assert result.fell_back is True
    assert result.optimized == PROMPT and result.text == PROMPT
    assert result.fallback_reason.startswith(reason), result.fallback_reason


def test_healthy_server_optimizes(server, make_backend) -> None:
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5))
    assert (result.fell_back, result.optimized) == (False, REWRITE)


def test_dead_endpoint_falls_back_as_unavailable(make_backend) -> None:
    url = unused_url()
    result, elapsed = optimize(BPOOptimizer(make_backend(url), timeout=5, max_retries=2))
    assert_fell_back(result, "backend_unavailable")
    assert url in result.fallback_detail
    assert elapsed < 2  # two short backoffs, not the whole budget


def test_hanging_server_falls_back_within_the_budget(server, make_backend) -> None:
    server.inject(Fault("hang", seconds=10))
    optimizer = BPOOptimizer(make_backend(server.url), timeout=0.5)
    result, elapsed = optimize(optimizer)
    assert_fell_back(result, "timeout")
    assert 0.45 <= elapsed <= 0.55, elapsed
    assert len(server.requests) == 1


@pytest.mark.parametrize("first, second", [(503, 429), (429, 503)])
def test_retry_after_is_honoured_then_succeeds(server, make_backend, first, second) -> None:
    server.inject(
        Fault("status", status=first, retry_after=0.2),
        Fault("status", status=second, retry_after=0.2),
    )
    optimizer = BPOOptimizer(make_backend(server.url), timeout=5, max_retries=2)
    result, elapsed = optimize(optimizer)
    assert (result.fell_back, result.optimized) == (False, REWRITE)
    assert len(server.requests) == 3
    assert 0.4 <= elapsed < 2, elapsed


def test_retries_are_bounded_by_max_retries(server, make_backend) -> None:
    server.inject(*[Fault("status", status=503, retry_after=0.05)] * 3)
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5, max_retries=1))
    assert_fell_back(result, "backend_overloaded")
    assert len(server.requests) == 2


def test_retry_after_beyond_the_budget_gives_up_at_once(server, make_backend) -> None:
    server.inject(Fault("status", status=429, retry_after=30))
    result, elapsed = optimize(BPOOptimizer(make_backend(server.url), timeout=2))
    assert_fell_back(result, "timeout")
    assert "exceed the latency budget" in result.fallback_detail
    assert elapsed < 0.5, elapsed
    assert len(server.requests) == 1


def test_malformed_json_is_not_retried(server, make_backend) -> None:
    server.inject(Fault("malformed_json"))
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5))
    assert_fell_back(result, "backend_error")
    assert "malformed JSON" in result.fallback_detail
    assert len(server.requests) == 1


def test_dropped_connection_is_retried(server, make_backend) -> None:
    server.inject(Fault("drop_connection"))
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5))
    assert (result.fell_back, result.optimized) == (False, REWRITE)
    assert len(server.requests) == 2


def test_empty_completion_is_rejected(server, make_backend) -> None:
    server.inject(Fault("empty"))
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5))
    assert_fell_back(result, "empty_output")


def test_runaway_completion_is_rejected(server, make_backend) -> None:
    server.inject(Fault("runaway"))
    result, _ = optimize(BPOOptimizer(make_backend(server.url), timeout=5))
    assert_fell_back(result, "runaway_output")


def test_one_failure_in_a_batch_does_not_spoil_the_others(server, make_backend) -> None:
    server.inject(Fault("malformed_json"))
    optimizer = BPOOptimizer(make_backend(server.url), timeout=5, max_concurrency=1)
    results = optimizer.optimize_batch([PROMPT, PROMPT + " Briefly.", PROMPT + " In detail."])
    assert [r.fell_back for r in results] == [True, False, False]
    assert results[0].fallback_reason.startswith("backend_error")


async def test_async_api_falls_back_too(server, make_backend) -> None:
    server.inject(Fault("hang", seconds=10))
    optimizer = BPOOptimizer(make_backend(server.url), timeout=0.5)
    started = time.perf_counter()
    result = await optimizer.aoptimize(PROMPT)
    assert_fell_back(result, "timeout")
    assert time.perf_counter() - started <= 0.55


@pytest.mark.parametrize(
    "fault, error",
    [
        (Fault("hang", seconds=10), OptimizationTimeoutError),
        (Fault("status", status=429), TransientBackendError),
        (Fault("malformed_json"), BackendError),
        (Fault("empty"), GuardError),
        (Fault("runaway"), GuardError),
    ],
)
def test_on_error_raise_raises_the_matching_error(server, make_backend, fault, error) -> None:
    server.inject(fault)
    optimizer = BPOOptimizer(make_backend(server.url), timeout=1, max_retries=0, on_error="raise")
    with pytest.raises(error):
        optimizer.optimize(PROMPT)


def test_on_error_raise_on_a_dead_endpoint(make_backend) -> None:
    optimizer = BPOOptimizer(make_backend(unused_url()), timeout=2, on_error="raise")
    with pytest.raises(BackendUnavailableError, match="bpo serve"):
        optimizer.optimize(PROMPT)
