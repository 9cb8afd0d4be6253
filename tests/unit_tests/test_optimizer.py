"""The optimizer's contract, exercised through real Backend subclasses defined here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from bpo_integrations import (
    BackendError,
    BPOOptimizer,
    FallbackReason,
    Generation,
    GenerationSettings,
    GuardError,
    OptimizationTimeoutError,
    TransientBackendError,
)
from bpo_integrations.backends import Backend, CallableBackend


class RecordingBackend(Backend):
    """Appends a hint to each prompt and records every call it gets."""

    name = "recording"

    def __init__(self, *, max_batch_size: int = 1, delay: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.delay = delay
        self.calls: list[tuple[list[str], GenerationSettings]] = []
        self.active = 0
        self.max_active = 0

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        raise AssertionError("the optimizer calls agenerate")

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        self.calls.append((list(prompts), settings))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return [Generation(f"{p} Explain step by step.", "eos_token") for p in prompts]


class FlakyBackend(Backend):
    """Fails with the given errors first, then answers."""

    name = "flaky"

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return [Generation(p + " Be specific.", "eos_token") for p in prompts]


def test_optimize_returns_the_rewrite_and_a_record() -> None:
    backend = RecordingBackend()
    result = BPOOptimizer(backend).optimize("Why is the sky blue?")
    assert result.optimized == "Why is the sky blue? Explain step by step."
    assert result.text == result.optimized
    assert result.original == "Why is the sky blue?"
    assert (result.fell_back, result.fallback_reason, result.backend) == (False, None, "recording")
    assert result.rounds == (result.optimized,)
    assert result.latency_s >= 0


def test_context_is_never_sent_to_the_optimizer() -> None:
    backend = RecordingBackend()
    email = "Dear Anne,\nCan you join us?\nBest,\nTim"
    result = BPOOptimizer(backend).optimize("Reply to this email.", context=email)
    assert backend.calls[0][0] == ["Reply to this email."]
    assert result.text == "Reply to this email. Explain step by step.\n" + email


def test_mode_selects_the_reference_presets() -> None:
    backend = RecordingBackend()
    optimizer = BPOOptimizer(backend, cache_size=0)
    optimizer.optimize("a prompt")
    optimizer.optimize("a prompt", mode="aggressive")
    optimizer.optimize("a prompt", mode="greedy")
    stable, aggressive, greedy = (settings for _, settings in backend.calls)
    assert (stable.temperature, stable.top_p, stable.do_sample) == (0.6, 0.9, True)
    assert (aggressive.temperature, aggressive.top_p) == (0.9, 0.9)
    assert "[PROTECT]" in aggressive.bad_words and "[KE" in aggressive.stop
    assert aggressive.min_new_tokens_from_prompt
    assert greedy.do_sample is False


def test_iterations_reoptimize_the_previous_round() -> None:
    backend = RecordingBackend()
    result = BPOOptimizer(backend, iterations=3).optimize("Q")
    assert [call[0] for call in backend.calls] == [
        ["Q"],
        ["Q Explain step by step."],
        ["Q Explain step by step. Explain step by step."],
    ]
    assert len(result.rounds) == 3 and result.optimized == result.rounds[-1]


def test_a_rejected_later_round_keeps_the_last_good_one() -> None:
    answers = iter(["Tell me 3 jokes, each short.", "Tell me three jokes."])
    optimizer = BPOOptimizer(CallableBackend(lambda p: next(answers)), iterations=2)
    result = optimizer.optimize("Tell me 3 jokes")
    assert result.optimized == "Tell me 3 jokes, each short."
    assert not result.fell_back


def test_backend_error_falls_back_to_the_original() -> None:
    optimizer = BPOOptimizer(FlakyBackend([BackendError("model not found")]))
    result = optimizer.optimize("hello there")
    assert result.text == "hello there"
    assert result.fell_back
    assert result.fallback_reason is FallbackReason.BACKEND_ERROR
    assert result.fallback_detail == "model not found"
    assert result.to_dict()["fallback_reason"] == "backend_error: model not found"


def test_on_error_raise_raises_the_cause() -> None:
    with pytest.raises(BackendError, match="model not found"):
        BPOOptimizer(FlakyBackend([BackendError("model not found")]), on_error="raise").optimize(
            "x"
        )
    with pytest.raises(GuardError, match="lost_protected_content"):
        BPOOptimizer(CallableBackend(lambda p: "no number"), on_error="raise").optimize("Say 42")


def test_guard_failure_falls_back_with_the_reason() -> None:
    result = BPOOptimizer(CallableBackend(lambda p: "Summarize the text.")).optimize(
        "Summarize https://example.com/a in 3 lines"
    )
    assert result.fell_back
    assert result.fallback_reason.startswith("lost_protected_content")
    assert "https://example.com/a" in result.fallback_detail
    assert result.optimized == "Summarize https://example.com/a in 3 lines"


def test_transient_errors_are_retried_within_the_budget() -> None:
    backend = FlakyBackend(
        [TransientBackendError("503"), TransientBackendError("429", retry_after=0.05)]
    )
    result = BPOOptimizer(backend, max_retries=2, timeout=5).optimize("hi")
    assert backend.attempts == 3
    assert result.optimized == "hi Be specific." and not result.fell_back


def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    backend = FlakyBackend([TransientBackendError("429", retry_after=30)])
    started = time.perf_counter()
    result = BPOOptimizer(backend, timeout=2).optimize("hi")
    assert time.perf_counter() - started < 1
    assert result.fell_back and result.fallback_reason.startswith("timeout")
    assert backend.attempts == 1


def test_the_latency_budget_holds_against_a_slow_backend() -> None:
    optimizer = BPOOptimizer(RecordingBackend(delay=5), timeout=0.3)
    started = time.perf_counter()
    result = optimizer.optimize("hi")
    elapsed = time.perf_counter() - started
    assert 0.3 <= elapsed < 0.33 + 0.05
    assert result.fell_back and result.fallback_reason.startswith("timeout")
    with pytest.raises(OptimizationTimeoutError):
        BPOOptimizer(RecordingBackend(delay=5), timeout=0.1, on_error="raise").optimize("hi")


def test_cache_hits_make_no_backend_call() -> None:
    backend = RecordingBackend()
    optimizer = BPOOptimizer(backend)
    first = optimizer.optimize_batch(["a", "b"])
    second = optimizer.optimize_batch(["a", "b"])
    assert len(backend.calls) == 2
    assert [r.text for r in first] == [r.text for r in second]
    assert all(r.cached for r in second) and not any(r.cached for r in first)
    optimizer.optimize("a", mode="greedy")
    assert len(backend.calls) == 3  # other settings, other key


def test_batch_keeps_order_chunks_and_bounds_concurrency() -> None:
    backend = RecordingBackend(max_batch_size=4, delay=0.02)
    prompts = [f"prompt {i}" for i in range(20)]
    results = BPOOptimizer(backend, max_concurrency=2).optimize_batch(prompts)
    assert [r.original for r in results] == prompts
    assert [r.optimized for r in results] == [f"{p} Explain step by step." for p in prompts]
    assert sorted(len(call[0]) for call in backend.calls) == [4] * 5
    assert backend.max_active == 2


async def test_async_batch_and_single() -> None:
    backend = RecordingBackend()
    optimizer = BPOOptimizer(backend)
    one = await optimizer.aoptimize("x", context="ctx")
    many = await optimizer.aoptimize_batch(["y", "z"], contexts=["c1", None])
    assert one.text == "x Explain step by step.\nctx"
    assert [r.text for r in many] == ["y Explain step by step.\nc1", "z Explain step by step."]


async def test_sync_api_works_inside_a_running_event_loop() -> None:
    assert BPOOptimizer(RecordingBackend()).optimize("q").optimized == "q Explain step by step."


def test_empty_and_too_long_inputs_pass_through() -> None:
    backend = RecordingBackend()
    optimizer = BPOOptimizer(backend, max_input_chars=100)
    empty, long = optimizer.optimize_batch(["  ", "x" * 101])
    assert (empty.text, empty.fallback_reason) == ("  ", "empty_input")
    assert long.text == "x" * 101 and long.fallback_reason.startswith("input_too_long")
    assert backend.calls == []


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["list"]])
def test_wrong_types_are_a_clear_error(bad: object) -> None:
    with pytest.raises(TypeError, match="a prompt must be a str"):
        BPOOptimizer(RecordingBackend()).optimize(bad)  # type: ignore[arg-type]


def test_invalid_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="iterations"):
        BPOOptimizer(RecordingBackend(), iterations=0)
    with pytest.raises(ValueError, match="on_error"):
        BPOOptimizer(RecordingBackend(), on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        BPOOptimizer(RecordingBackend(), timeout=0)
    with pytest.raises(ValueError, match="unknown mode"):
        GenerationSettings.for_mode("wild")  # type: ignore[arg-type]


def test_circuit_opens_after_consecutive_failures_then_probes() -> None:
    from bpo_integrations.circuit import CircuitBreaker

    backend = FlakyBackend([BackendError("down")] * 3)
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=0.2)
    optimizer = BPOOptimizer(backend, circuit_breaker=breaker, cache_size=0)
    reasons = [optimizer.optimize(f"p{i}").fallback_message for i in range(4)]
    assert reasons[:2] == ["backend_error: down"] * 2
    assert reasons[2:] == ["circuit_open"] * 2
    assert backend.attempts == 2 and breaker.state == "open"
    started = time.perf_counter()
    optimizer.optimize("skipped")
    assert time.perf_counter() - started < 0.05  # no backend call while open: no added latency
    time.sleep(0.25)
    assert breaker.state == "half_open"
    assert optimizer.optimize("probe").fallback_message == "backend_error: down"
    assert breaker.state == "open" and backend.attempts == 3  # one probe, re-opened
    time.sleep(0.25)
    assert optimizer.optimize("probe again").optimized == "probe again Be specific."
    assert breaker.state == "closed" and breaker.consecutive_failures == 0
