"""One backend call under an optimization's latency budget: retried on transient errors while
the budget allows, cut off at the deadline, and discarded if it answers after it."""

from __future__ import annotations

import asyncio
import math
import sys
import time

from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import BackendError, OptimizationTimeoutError
from bpo_integrations.retry import RetryPolicy
from bpo_integrations.settings import Generation, GenerationSettings


async def generate_within_budget(
    backend: Backend,
    prompts: list[str],
    settings: GenerationSettings,
    deadline: float | None,
    *,
    max_retries: int,
    budget_s: float | None,
) -> list[Generation]:
    """One generation per prompt from ``backend``, by ``deadline`` (a ``time.perf_counter()``
    value; ``None``: no limit); ``budget_s`` is the budget that messages name."""
    # short, steady waits: the latency budget, not the backoff, bounds a Retry-After
    policy = RetryPolicy(
        max_retries, initial_wait=0.1, max_backoff=2.0, max_wait=math.inf, jitter=False
    )
    return await policy.call(
        lambda: _generate_once(backend, prompts, settings, deadline, budget_s), deadline=deadline
    )


async def _generate_once(
    backend: Backend,
    prompts: list[str],
    settings: GenerationSettings,
    deadline: float | None,
    budget_s: float | None,
) -> list[Generation]:
    left = None if deadline is None else deadline - time.perf_counter()
    if left is not None and left <= 0:
        raise OptimizationTimeoutError("latency budget spent before the call")
    call = backend.agenerate(prompts, settings, timeout=left)
    try:
        if left is None:
            generations = await call
        elif sys.version_info >= (3, 11):  # no extra task, unlike wait_for
            async with asyncio.timeout(left):
                generations = await call
        else:
            generations = await asyncio.wait_for(call, timeout=left)
    except OptimizationTimeoutError:
        raise  # the backend's own, which says more
    except asyncio.TimeoutError as error:
        raise OptimizationTimeoutError(
            f"no answer from the {backend.name} backend within {budget_s}s"
        ) from error
    if deadline is not None and time.perf_counter() > deadline:
        # A backend that blocked the loop (a sync function run inline) could not be cut off.
        raise OptimizationTimeoutError(
            f"the {backend.name} backend answered after the {budget_s}s budget"
        )
    if len(generations) != len(prompts):
        raise BackendError(
            f"{backend.name} returned {len(generations)} rewrites for {len(prompts)} prompts"
        )
    return generations
