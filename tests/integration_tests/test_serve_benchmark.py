"""Throughput of ``bpo serve``'s dynamic batching with the default model (SmolLM2-135M).

The target: 16 concurrent clients get at least 4x the throughput of the same 16 requests sent
one after the other, on 2 CPU cores. Slow (minutes on 2 cores): ``pytest -m slow``. Measure it
on a quiet machine: CPU contention from other processes swamps the effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx

from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread
from bpo_integrations.template import format_bpo_message

pytestmark = [pytest.mark.slow, pytest.mark.shared_data, pytest.mark.timeout(1800)]

CLIENTS = 16
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from bpo_integrations.models import DefaultModelUnavailableError

    try:
        app = build_app(ServeConfig(max_batch_size=CLIENTS))  # the default model and settings
    except DefaultModelUnavailableError as error:
        pytest.skip(str(error))
    with serve_in_thread(app) as base_url:
        yield base_url


async def _send(client: httpx.AsyncClient, prompt: str) -> int:
    # the BPO request as OpenAIBackend sends it: the default model's own chat template
    body = {
        "messages": [{"role": "user", "content": format_bpo_message(prompt)}],
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["usage"]["completion_tokens"]


async def _sequential(url: str, prompts: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return [await _send(client, p) for p in prompts]


async def _concurrent(url: str, prompts: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return list(await asyncio.gather(*(_send(client, p) for p in prompts)))


def test_sixteen_concurrent_clients_get_four_times_the_throughput(
    url: str, bpo_val_records: list[dict[str, Any]], record_property: Any
) -> None:
    prompts = [r["instruction"] for r in bpo_val_records if len(r["instruction"]) < 300][:CLIENTS]
    assert len(prompts) == CLIENTS
    asyncio.run(_sequential(url, prompts[:2]))  # warm-up

    started = time.perf_counter()
    tokens_one_by_one = asyncio.run(_sequential(url, prompts))
    sequential_s = time.perf_counter() - started

    started = time.perf_counter()
    tokens_together = asyncio.run(_concurrent(url, prompts))
    concurrent_s = time.perf_counter() - started

    speedup = sequential_s / concurrent_s
    record_property("sequential_s", round(sequential_s, 2))
    record_property("concurrent_s", round(concurrent_s, 2))
    record_property("speedup", round(speedup, 2))
    print(
        f"\n{CLIENTS} requests x {NEW_TOKENS} new tokens: sequential {sequential_s:.1f} s, "
        f"concurrent {concurrent_s:.1f} s, speedup {speedup:.1f}x "
        f"({sum(tokens_one_by_one)} and {sum(tokens_together)} tokens)"
    )
    assert speedup >= 4.0
