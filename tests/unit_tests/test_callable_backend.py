"""Where a CallableBackend's function runs: inline for the sync API, in a worker thread otherwise.

A sync function called through the sync API runs in the caller's thread (no thread hop), on the
sync API's own event loop where nothing else waits. From the async API, from the sync API inside a
running loop, and for batch groups that run side by side, it runs in a worker thread, so that no
event loop is blocked. A rewrite that comes after the latency budget falls back with ``timeout``.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bpo_integrations import BPOOptimizer, FallbackReason, OptimizationTimeoutError
from bpo_integrations._loop import concurrent, may_block, run_sync
from bpo_integrations.backends import CallableBackend

SUFFIX = " Answer step by step."


def recording(threads: list[str], delay: float = 0.0) -> CallableBackend:
    def rewrite(prompt: str) -> str:
        threads.append(threading.current_thread().name)
        time.sleep(delay)
        return prompt + SUFFIX

    return CallableBackend(rewrite)


def test_sync_api_calls_a_sync_function_in_the_callers_thread() -> None:
    threads: list[str] = []
    optimizer = BPOOptimizer(recording(threads), cache_size=0)

    def call() -> None:
        assert optimizer.optimize("Why?").optimized == "Why?" + SUFFIX

    worker = threading.Thread(target=call, name="caller-thread")
    worker.start()
    worker.join()
    call()
    assert threads == ["caller-thread", threading.current_thread().name]


async def test_async_api_calls_a_sync_function_in_a_worker_thread() -> None:
    threads: list[str] = []
    result = await BPOOptimizer(recording(threads), cache_size=0).aoptimize("Why?")
    assert result.optimized == "Why?" + SUFFIX
    assert len(threads) == 1 and threads[0] != threading.current_thread().name


async def test_a_slow_sync_function_leaves_the_callers_loop_free() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await BPOOptimizer(recording([], delay=0.2), cache_size=0).aoptimize("Why?")
    finally:
        task.cancel()
    assert not result.fell_back
    assert ticks >= 5  # the loop ran the ticker while the function slept


async def test_sync_api_inside_a_running_loop_does_not_block_the_background_loop() -> None:
    threads: list[str] = []
    result = BPOOptimizer(recording(threads), cache_size=0).optimize("Why?")
    assert result.optimized == "Why?" + SUFFIX
    assert threads[0] not in (threading.current_thread().name, "bpo-integrations-loop")


def test_batch_groups_still_run_side_by_side_in_worker_threads() -> None:
    threads: list[str] = []
    optimizer = BPOOptimizer(recording(threads, delay=0.2), cache_size=0, max_concurrency=4)
    started = time.perf_counter()
    results = optimizer.optimize_batch([f"prompt {i}" for i in range(4)])
    elapsed = time.perf_counter() - started
    assert [r.optimized for r in results] == [f"prompt {i}{SUFFIX}" for i in range(4)]
    assert elapsed < 0.6, elapsed  # 0.8 s if the four calls had run one after the other
    assert threading.current_thread().name not in threads


def test_a_late_inline_rewrite_falls_back_with_a_timeout() -> None:
    threads: list[str] = []
    optimizer = BPOOptimizer(recording(threads, delay=0.3), timeout=0.1, cache_size=0)
    started = time.perf_counter()
    result = optimizer.optimize("Why?")
    elapsed = time.perf_counter() - started
    assert threads == [threading.current_thread().name]  # inline: nothing could cut it off
    assert elapsed >= 0.3
    assert result.fell_back and result.optimized == "Why?"
    assert result.fallback_reason is FallbackReason.TIMEOUT
    assert "after the 0.1s budget" in result.fallback_detail
    strict = BPOOptimizer(recording([], delay=0.3), timeout=0.1, on_error="raise")
    with pytest.raises(OptimizationTimeoutError, match=r"after the 0\.1s budget"):
        strict.optimize("Why?")


def test_a_rewrite_within_the_budget_is_kept_and_cached() -> None:
    threads: list[str] = []
    optimizer = BPOOptimizer(recording(threads, delay=0.01), timeout=5)
    first, second = optimizer.optimize("Why?"), optimizer.optimize("Why?")
    assert (first.optimized, first.fell_back, second.cached) == ("Why?" + SUFFIX, False, True)
    assert len(threads) == 1


def test_may_block_only_on_the_sync_apis_own_loop() -> None:
    async def probe() -> tuple[bool, bool]:
        with concurrent():
            shared = await asyncio.create_task(_may_block())
        return may_block(), shared

    async def _may_block() -> bool:
        return may_block()

    assert may_block() is False  # no loop running
    assert run_sync(probe()) == (True, False)  # own loop; tasks marked concurrent may not
    assert asyncio.run(_may_block()) is False  # a loop of the caller's own


def test_the_sync_apis_loop_survives_errors_and_interrupts() -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt

    async def failing() -> None:
        raise ValueError("bad rewrite")

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    with pytest.raises(KeyboardInterrupt):
        run_sync(interrupted())
    with pytest.raises(ValueError, match="bad rewrite"):
        run_sync(failing())
    assert [run_sync(answer()), run_sync(answer())] == [42, 42]
