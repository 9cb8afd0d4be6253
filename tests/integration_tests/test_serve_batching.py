"""Concurrent requests to ``bpo serve`` are decoded together, and batching changes no answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openvino_genai")

import httpx

from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread

CLIENTS = 8


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(model=str(tiny_llama_dir), max_batch_size=CLIENTS, max_queue=64)
    with serve_in_thread(build_app(config)) as base_url:
        yield base_url


def _counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def _generate_concurrently(url: str, prompts: list[str], tokens: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(prompt: str) -> str:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": tokens}}
            response = await client.post("/generate", json=body)
            assert response.status_code == 200, response.text
            return response.json()["generated_text"]

        return await asyncio.gather(*(one(p) for p in prompts))


def test_concurrent_requests_are_decoded_together(url: str) -> None:
    prompt = "Tell me about Harry Potter"
    alone = httpx.post(
        f"{url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 48}}, timeout=60
    ).json()["generated_text"]
    steps_before = _counter(url, "bpo_serve_engine_steps_total")

    texts = asyncio.run(_generate_concurrently(url, [prompt] * CLIENTS, 48))

    assert texts == [alone] * CLIENTS  # greedy requests decoded together answer as alone
    steps = _counter(url, "bpo_serve_engine_steps_total") - steps_before
    assert steps < CLIENTS * 48 / 2, f"{CLIENTS} requests of 48 tokens took {steps} steps"
    assert _counter(url, "bpo_serve_max_batch_size") >= CLIENTS / 2
