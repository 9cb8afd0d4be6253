"""Concurrent requests to ``bpo serve`` share batched generations, and batching changes no answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx

from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread

CLIENTS = 8


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(
        model=str(tiny_llama_dir), max_batch_size=CLIENTS, batch_wait_ms=300, max_queue=64
    )
    with serve_in_thread(build_app(config)) as base_url:
        yield base_url


def _counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def _generate_concurrently(url: str, prompts: list[str]) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(prompt: str) -> str:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": 8}}
            response = await client.post("/generate", json=body)
            assert response.status_code == 200, response.text
            return response.json()["generated_text"]

        return await asyncio.gather(*(one(p) for p in prompts))


def test_concurrent_requests_are_gathered_into_one_batch(url: str) -> None:
    prompt = "Tell me about Harry Potter"
    alone = httpx.post(
        f"{url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 8}}, timeout=60
    ).json()["generated_text"]
    batches_before = _counter(url, "bpo_serve_batches_total")
    rows_before = _counter(url, "bpo_serve_batch_rows_total")
    reused_before = _counter(url, "bpo_serve_prefix_tokens_reused_total")

    texts = asyncio.run(_generate_concurrently(url, [prompt] * CLIENTS))

    assert texts == [alone] * CLIENTS  # greedy rows in a batch decode as they do alone
    batches = _counter(url, "bpo_serve_batches_total") - batches_before
    rows = _counter(url, "bpo_serve_batch_rows_total") - rows_before
    assert rows == CLIENTS
    assert batches <= 2, f"{CLIENTS} concurrent requests took {batches} generations"
    assert _counter(url, "bpo_serve_max_batch_size") >= CLIENTS / 2
    # the rows of a batch (and rows that join it) prefill the template they share once
    assert _counter(url, "bpo_serve_prefix_tokens_reused_total") > reused_before
