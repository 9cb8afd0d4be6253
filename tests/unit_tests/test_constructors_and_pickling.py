"""One constructor rule for the three faces; everything pickles (across processes too); ``with`` and
``async with`` close every client."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

pytest.importorskip("langchain")
pytest.importorskip("llama_index.core")

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend, LocalBackend, OpenAIBackend, TGIBackend
from bpo_integrations.circuit import CircuitBreaker
from bpo_integrations.langchain import BPOMiddleware, BPORunnable
from bpo_integrations.llama_index import BPOQueryTransform
from bpo_integrations.testing.servers import ScriptedServer, hf_inference_online

SUFFIX = " Explain step by step."


def rewrite(prompt: str) -> str:
    """A module-level function: what pickle can carry (a lambda needs cloudpickle)."""
    return prompt + SUFFIX


FACES = [
    pytest.param(lambda *a, **k: BPORunnable(*a, **k), id="BPORunnable"),
    pytest.param(lambda *a, **k: BPOMiddleware(*a, **k), id="BPOMiddleware"),
    pytest.param(lambda *a, **k: BPOQueryTransform(*a, **k), id="BPOQueryTransform"),
]


@pytest.mark.parametrize("make", FACES)
def test_each_face_takes_an_optimizer_a_backend_or_nothing_positional_or_keyword(
    make: Any,
) -> None:
    optimizer = BPOOptimizer(CallableBackend(rewrite))
    backend = CallableBackend(rewrite)

    assert make(optimizer).optimizer is optimizer
    assert make(optimizer=optimizer).optimizer is optimizer
    assert make(backend).optimizer.backend is backend
    assert make(optimizer=backend).optimizer.backend is backend
    assert isinstance(make().optimizer.backend, LocalBackend)  # the embedded default model
    with pytest.raises(TypeError, match=r"takes a BPOOptimizer, a Backend, .* got int"):
        make(42)


def test_a_positional_backend_works_in_a_chain() -> None:
    assert BPORunnable(CallableBackend(rewrite)).invoke("Why?") == "Why?" + SUFFIX


def test_optimizer_cache_and_circuit_pickle_and_start_fresh() -> None:
    optimizer = BPOOptimizer(
        CallableBackend(rewrite), circuit_breaker=CircuitBreaker(3, cooldown_s=7)
    )
    optimizer.optimize("Why?")
    optimizer.circuit.record_failure()

    copy = pickle.loads(pickle.dumps(optimizer))

    assert copy.optimize("Why?").text == "Why?" + SUFFIX
    assert copy.cache.maxsize == optimizer.cache.maxsize
    assert (copy.circuit.failure_threshold, copy.circuit.cooldown_s) == (3, 7)
    assert copy.circuit.consecutive_failures == 0


def test_the_three_faces_pickle() -> None:
    optimizer = BPOOptimizer(CallableBackend(rewrite))
    runnable = pickle.loads(pickle.dumps(BPORunnable(optimizer, input_key="q")))
    middleware = pickle.loads(pickle.dumps(BPOMiddleware(optimizer, iterations=2)))
    transform = pickle.loads(pickle.dumps(BPOQueryTransform(optimizer, embed="both")))

    assert runnable.invoke({"q": "Why?"}) == {"q": "Why?" + SUFFIX}
    assert middleware.iterations == 2 and middleware.optimizer.optimize("Hi").optimized == (
        "Hi" + SUFFIX
    )
    assert transform.run("Why?").query_str == "Why?" + SUFFIX


@pytest.fixture
def server() -> Any:
    with ScriptedServer(rewrite, model_id="THUDM/BPO") as running:
        yield running


def test_http_backends_pickle_after_use_and_make_new_clients(server: ScriptedServer) -> None:
    with hf_inference_online():
        for backend in (
            TGIBackend(server.url),
            OpenAIBackend("THUDM/BPO", base_url=server.url + "/v1"),
        ):
            with BPOOptimizer(backend, timeout=10) as optimizer:
                optimizer.optimize("first")  # clients and pools now exist
                asyncio.run(optimizer.aoptimize("second"))
                with BPOOptimizer(pickle.loads(pickle.dumps(backend)), timeout=10) as copy:
                    assert copy.optimize("third").fell_back is False
                    assert asyncio.run(copy.aoptimize("fourth")).fell_back is False


def optimize_in_child(payload: bytes) -> list[str]:
    runnable = pickle.loads(payload)
    return [runnable.invoke("Why is the sky blue?"), runnable.optimizer.optimize("Hi").text]


def test_a_runnable_travels_to_another_process(server: ScriptedServer) -> None:
    runnable = BPORunnable(OpenAIBackend("THUDM/BPO", base_url=server.url + "/v1", api="chat"))
    runnable.invoke("warm up")  # a used one, with clients
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        answer = pool.submit(optimize_in_child, pickle.dumps(runnable)).result(timeout=120)
    assert answer[0].startswith("Why is the sky blue?")
    assert len([p for p, _ in server.requests if p == "/v1/chat/completions"]) == 3


CLOSING = """
    import asyncio
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import OpenAIBackend, TGIBackend
    from bpo_integrations.testing.servers import ScriptedServer, hf_inference_online

    def rewrite(text):  # the prompt out of the BPO template (raw) or the BPO message (chat)
        return text.split("\\n", 1)[-1].removesuffix(" [/INST]") + " Explain in detail."

    with ScriptedServer(rewrite, model_id="m") as server, hf_inference_online():
        def backends():
            return [
                OpenAIBackend("m", base_url=server.url + "/v1"),
                OpenAIBackend("m", base_url=server.url + "/v1", api="chat"),
                TGIBackend(server.url),
            ]

        for backend in backends():
            with BPOOptimizer(backend, timeout=10) as optimizer:
                assert not optimizer.optimize("hi").fell_back
                assert not any(r.fell_back for r in optimizer.optimize_batch(["a b", "c d"]))

        async def main():
            for backend in backends():
                async with BPOOptimizer(backend, timeout=10) as optimizer:
                    assert not (await optimizer.aoptimize("hi there")).fell_back
                    assert not optimizer.optimize("sync from async code").fell_back

        asyncio.run(main())
    print("done")
"""


def test_with_and_async_with_leave_no_unclosed_transport_at_exit() -> None:
    command = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c"]
    done = subprocess.run(
        [*command, textwrap.dedent(CLOSING)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "ResourceWarning" not in done.stderr and "unclosed" not in done.stderr, done.stderr
