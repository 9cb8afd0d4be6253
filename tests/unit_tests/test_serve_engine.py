"""The serve engine's token-by-token path shares the backend's worker thread with its batches."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.serve.engine import Completion, Engine, SamplingParams
from bpo_integrations.settings import GenerationSettings


async def _stream(engine: Engine, text: str, max_new_tokens: int) -> Completion:
    items = [
        item async for item in engine.stream(engine.encode(text), SamplingParams(max_new_tokens))
    ]
    assert isinstance(items[-1], Completion)
    return items[-1]


def test_streams_and_batches_run_the_model_on_one_thread(tiny_llama_dir: Path) -> None:
    # on CPU a second thread running torch gets a second OpenMP pool, which slows every batch
    engine = Engine(LocalBackend(tiny_llama_dir, device="cpu"))
    threads: set[str] = set()
    engine.model.register_forward_hook(lambda *_: threads.add(threading.current_thread().name))
    greedy = GenerationSettings.for_mode("greedy", max_new_tokens=4)

    async def scenario() -> tuple[Completion, Any]:
        return await asyncio.gather(
            _stream(engine, "Tell me about Harry Potter", 6),
            engine.backend.agenerate(["Hi", "Why is the sky blue?"], greedy),
        )

    try:
        streamed, batched = asyncio.run(scenario())
        assert streamed.generated_tokens == 6 and len(batched) == 2
        assert threads == {"bpo-local-backend"}
        assert engine.streams_run == 1 and engine.streams_running == 0
    finally:
        engine.close()


def test_a_stream_dropped_while_queued_never_runs(tiny_llama_dir: Path) -> None:
    engine = Engine(LocalBackend(tiny_llama_dir, device="cpu"))
    release = threading.Event()

    async def scenario() -> None:
        busy = asyncio.ensure_future(engine.backend.arun_in_worker(lambda: release.wait(10)))
        tokens = engine.stream(engine.encode("Hi"), SamplingParams(max_new_tokens=4))
        first = asyncio.ensure_future(anext(tokens))
        await asyncio.sleep(0.05)  # queued behind the busy call: the client hangs up
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await tokens.aclose()
        release.set()
        await busy
        await engine.backend.arun_in_worker(lambda: None)

    try:
        asyncio.run(scenario())
        assert engine.streams_run == 0
        streamed = asyncio.run(_stream(engine, "Hi", 4))  # the next stream runs as usual
        assert streamed.generated_tokens == 4 and engine.streams_run == 1
    finally:
        engine.close()
