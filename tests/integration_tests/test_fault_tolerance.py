"""Fault tolerance end to end: ``prompt | bpo | llm`` against a server PROCESS that the test controls.

The optimizer server is a :class:`~bpo_integrations.testing.servers.ScriptedServer` running in a
child process (so that it can be SIGKILLed mid-request), driven over its stdin/stdout with one JSON
command per line. Every scenario goes through real clients (huggingface_hub for TGI, openai for the
chat API), a real LCEL chain and real LangChain callbacks; the answering model is LangChain's fake
chat model, recording what it was asked.

What ``test_optimizer_fallback.py`` covers for the optimizer alone (each fault kind, retry counts,
``on_error="raise"``) is not repeated here: these tests add the chain, the tracing data, a killed
process, the circuit breaker and 1,000 concurrent calls under faults.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("openai")
pytest.importorskip("langchain_core")

from huggingface_hub import constants as hf_constants
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from pydantic import Field

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import OpenAIBackend, TGIBackend
from bpo_integrations.backends.base import Backend
from bpo_integrations.circuit import CircuitBreaker
from bpo_integrations.langchain import OPTIMIZATION_EVENT, BPORunnable
from bpo_integrations.testing.servers import Fault, hf_inference_online, unused_url

REPO = Path(__file__).resolve().parents[2]
PROMPT = "How do I sort a list of tuples by the second item in Python?"
SUFFIX = " Show sorted() with a key function and explain it step by step."
ANSWER = "Use sorted(items, key=lambda t: t[1])."

# The child process: a ScriptedServer whose rewrite is "<the user's prompt><SUFFIX>", for both the
# raw TGI template and the chat API's user message. Commands on stdin, one JSON object per line:
# {"op": "inject", "faults": [Fault fields, ...]}, {"op": "stats"}, {"op": "clear"}; EOF stops it.
SERVER_SCRIPT = r"""
import json, sys
from http.server import ThreadingHTTPServer
from bpo_integrations.template import BPO_INSTRUCTION
from bpo_integrations.testing.servers import Fault, ScriptedServer

# Room for 1,000 simultaneous connects; the default listen backlog is 5.
ThreadingHTTPServer.request_queue_size = 2048
suffix = sys.argv[1]

def rewrite(text):
    prompt = text.split(BPO_INSTRUCTION + "\n", 1)[-1].removesuffix(" [/INST]")
    return prompt + suffix

server = ScriptedServer(rewrite, model_id="scripted-bpo").start()
print(json.dumps({"url": server.url}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "inject":
        server.inject(*(Fault(**fields) for fields in command["faults"]))
    elif command["op"] == "clear":
        with server._lock:
            server._faults.clear()
            server.requests.clear()
    paths = server.paths()
    print(json.dumps({"requests": len(paths), "pending": server.pending_faults}), flush=True)
server.stop()
"""


class ServerProcess:
    """A ScriptedServer in a child process, scripted over a pipe and killable with SIGKILL."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, SUFFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.url: str = self._read()["url"]
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process exited with {self.process.wait(5)}")
        return json.loads(line)

    def command(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.process.stdin.flush()
            return self._read()

    def inject(self, *faults: Fault) -> None:
        self.command("inject", faults=[asdict(f) for f in faults])

    def requests(self) -> int:
        return self.command("stats")["requests"]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.requests() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not get {count} requests in {timeout}s")
            time.sleep(0.01)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


class RecordingFakeChatModel(FakeListChatModel):
    """LangChain's fake chat model, keeping the messages of every call."""

    responses: list[str] = Field(default_factory=lambda: [ANSWER])
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.seen.append(list(messages))
        return super()._call(messages, *args, **kwargs)


class EventCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, UUID]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))


MakeBackend = Callable[[str], Backend]
CHAT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a concise Python tutor."), ("human", "{question}")]
)


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test config sets HF_HUB_OFFLINE=1, which makes InferenceClient refuse even 127.0.0.1.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ServerProcess]:
    server = ServerProcess()
    # The process's first timed-out chain pays one-off costs (lazy imports, TLS setup,
    # huggingface_hub's header registry) that are not the budget's: pay them here.
    for backend in (
        TGIBackend(server.url),
        OpenAIBackend("THUDM/BPO", base_url=server.url + "/v1"),
    ):
        server.inject(Fault("hang", seconds=5))
        with hf_inference_online():
            run_chain(BPOOptimizer(backend, timeout=0.2, cache_size=0))
    server.command("clear")
    yield server
    server.close()


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    shared_server.command("clear")
    return shared_server


@pytest.fixture
def own_server() -> Iterator[ServerProcess]:
    server = ServerProcess()
    yield server
    server.close()


@pytest.fixture(params=["tgi", "openai"])
def make_backend(request: pytest.FixtureRequest) -> MakeBackend:
    if request.param == "tgi":
        return TGIBackend
    return lambda url: OpenAIBackend("scripted-bpo", base_url=url + "/v1")


def _find_run(runs: list[Any], name: str) -> Any:
    stack = list(runs)
    while stack:
        run = stack.pop()
        if run.name == name:
            return run
        stack.extend(run.child_runs)
    raise AssertionError(f"no run named {name!r}")


def run_chain(optimizer: BPOOptimizer) -> tuple[dict[str, Any], float]:
    """``prompt | bpo | llm`` once; returns what the records say and the wall-clock time.

    Asserts the chain answered, and returns the ``bpo_optimize`` child run's outputs, the
    ``bpo_optimization`` event's data and the text the model was given.
    """
    model = RecordingFakeChatModel()
    chain = CHAT_PROMPT | BPORunnable(optimizer=optimizer) | model
    runs, events = RunCollectorCallbackHandler(), EventCollector()
    # A full garbage collection of the test process's heap takes 0.1-0.2 s: none in the timing.
    gc.disable()
    try:
        started = time.perf_counter()
        answer = chain.invoke({"question": PROMPT}, {"callbacks": [runs, events]})
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    assert answer.content == ANSWER
    span = _find_run(runs.traced_runs, "bpo_optimize")
    ((name, event, _),) = events.events
    assert name == OPTIMIZATION_EVENT
    ((system, human),) = model.seen
    assert system.content == "You are a concise Python tutor."
    return {"span": span.outputs, "event": event, "model_input": human.content}, elapsed


def assert_answered_with_original(records: dict[str, Any], reason: str) -> None:
    assert records["model_input"] == PROMPT
    for where in ("span", "event"):
        record = records[where]
        assert record["fell_back"] is True, (where, record)
        assert record["original"] == record["optimized"] == PROMPT, (where, record)
        assert record["fallback_reason"].startswith(reason), (where, record["fallback_reason"])


def test_healthy_server_rewrites_through_the_chain(server, make_backend) -> None:
    records, _ = run_chain(BPOOptimizer(make_backend(server.url), timeout=5, cache_size=0))
    assert records["model_input"] == PROMPT + SUFFIX
    assert records["span"]["fell_back"] is False and records["event"]["fell_back"] is False


def test_connection_refused(make_backend) -> None:
    url = unused_url()
    optimizer = BPOOptimizer(make_backend(url), timeout=5, cache_size=0)
    records, elapsed = run_chain(optimizer)
    assert_answered_with_original(records, "backend_unavailable")
    assert url in records["event"]["fallback_reason"]
    assert elapsed < 2, elapsed  # two short backoffs, not the 5 s budget


def test_server_killed_mid_request(own_server, make_backend) -> None:
    own_server.inject(Fault("hang", seconds=60))
    optimizer = BPOOptimizer(make_backend(own_server.url), timeout=10, cache_size=0)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_chain, optimizer)
        own_server.wait_for_requests(1)
        killed = time.perf_counter()
        own_server.kill()
        records, _ = future.result(timeout=10)
    after_kill = time.perf_counter() - killed
    assert_answered_with_original(records, "backend_unavailable")
    assert after_kill < 2, after_kill  # the reset is noticed at once, not at the 10 s budget


def test_hanging_server_holds_the_latency_budget(server, make_backend) -> None:
    budget = 1.0
    server.inject(Fault("hang", seconds=60))
    optimizer = BPOOptimizer(make_backend(server.url), timeout=budget, cache_size=0)
    records, elapsed = run_chain(optimizer)
    assert_answered_with_original(records, "timeout")
    assert 0.95 * budget <= elapsed <= 1.1 * budget, elapsed
    assert server.requests() == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_retried_within_the_budget(server, make_backend, status) -> None:
    server.inject(*[Fault("status", status=status, retry_after=0.2)] * 2)
    optimizer = BPOOptimizer(make_backend(server.url), timeout=5, max_retries=2, cache_size=0)
    records, elapsed = run_chain(optimizer)
    assert records["model_input"] == PROMPT + SUFFIX  # the third attempt got through
    assert records["event"]["fell_back"] is False
    assert server.requests() == 3
    assert 0.4 <= elapsed < 2, elapsed


@pytest.mark.parametrize("status", [429, 503])
def test_persistent_overload_falls_back_after_the_retries(server, make_backend, status) -> None:
    server.inject(*[Fault("status", status=status, retry_after=0.1)] * 5)
    optimizer = BPOOptimizer(make_backend(server.url), timeout=5, max_retries=2, cache_size=0)
    records, elapsed = run_chain(optimizer)
    assert_answered_with_original(records, "backend_overloaded")
    assert f"HTTP {status}" in records["span"]["fallback_reason"]
    assert server.requests() == 3
    assert 0.2 <= elapsed < 2, elapsed


def test_retry_after_longer_than_the_budget_falls_back_at_once(server, make_backend) -> None:
    server.inject(Fault("status", status=503, retry_after=30))
    optimizer = BPOOptimizer(make_backend(server.url), timeout=3, cache_size=0)
    records, elapsed = run_chain(optimizer)
    assert_answered_with_original(records, "timeout")
    assert elapsed < 1, elapsed


@pytest.mark.parametrize(
    "fault, reason",
    [
        (Fault("malformed_json"), "backend_error"),
        (Fault("empty"), "empty_output"),
        (Fault("runaway"), "runaway_output"),
    ],
    ids=["malformed_json", "empty", "runaway"],
)
def test_bad_answers_fall_back(server, make_backend, fault, reason) -> None:
    server.inject(fault)
    records, _ = run_chain(BPOOptimizer(make_backend(server.url), timeout=5, cache_size=0))
    assert_answered_with_original(records, reason)
    assert server.requests() == 1  # a bad answer is not retried


def test_unencodable_prompt_falls_back_on_http_backends(server, make_backend) -> None:
    # A lone surrogate is a valid Python str but cannot be sent as UTF-8 JSON.
    odd = PROMPT + " \ud800"
    optimizer = BPOOptimizer(make_backend(server.url), timeout=5, cache_size=0)
    result = optimizer.optimize(odd)
    assert (result.fell_back, result.optimized) == (True, odd)
    assert result.fallback_reason.startswith("backend_error")
    assert "UnicodeEncodeError" in result.fallback_detail
    assert server.requests() == 0


def test_circuit_breaker_skips_a_failing_backend_then_probes(server, make_backend) -> None:
    budget, cooldown = 0.4, 1.0
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=cooldown)
    optimizer = BPOOptimizer(
        make_backend(server.url), timeout=budget, circuit_breaker=breaker, cache_size=0
    )
    server.inject(*[Fault("hang", seconds=60)] * 3)
    for _ in range(3):
        assert optimizer.circuit.state == "closed"
        records, elapsed = run_chain(optimizer)
        assert_answered_with_original(records, "timeout")
        assert elapsed >= 0.95 * budget
    assert optimizer.circuit.state == "open"
    assert optimizer.circuit.consecutive_failures == 3

    chain_s, optimizer_s = [], []
    for _ in range(5):
        records, elapsed = run_chain(optimizer)
        assert_answered_with_original(records, "circuit_open")
        chain_s.append(elapsed)
        optimizer_s.append(records["event"]["latency_s"])
    # Skipping adds no latency: well under a millisecond in the optimizer, against a 0.4 s budget.
    assert max(optimizer_s) < 0.001, optimizer_s
    assert sorted(chain_s)[2] < 0.05, chain_s
    assert server.requests() == 3  # nothing reached the server while open

    time.sleep(cooldown)
    assert optimizer.circuit.state == "half_open"
    server.inject(Fault("hang", seconds=60))
    records, elapsed = run_chain(optimizer)  # the probe fails: open for another cool-down
    assert_answered_with_original(records, "timeout")
    assert optimizer.circuit.state == "open"
    records, _ = run_chain(optimizer)
    assert_answered_with_original(records, "circuit_open")
    assert server.requests() == 4

    time.sleep(cooldown)
    records, _ = run_chain(optimizer)  # the probe succeeds: closed again
    assert records["model_input"] == PROMPT + SUFFIX
    assert optimizer.circuit.state == "closed"
    assert optimizer.circuit.consecutive_failures == 0
    assert server.requests() == 5


def _mixed_faults(count: int, rng: random.Random) -> list[Fault]:
    faults = (
        [Fault("status", status=503, retry_after=0.05)] * (count // 4)
        + [Fault("hang", seconds=rng.uniform(0.1, 0.5)) for _ in range(count // 4)]
        + [Fault("drop_connection")] * (count // 4)
        + [Fault("malformed_json")] * (count // 4)
    )
    rng.shuffle(faults)
    return faults


async def test_1000_concurrent_optimizations_under_faults(server) -> None:
    total, faulted = 1000, 400
    faults = _mixed_faults(faulted, random.Random(7))
    malformed = sum(f.kind == "malformed_json" for f in faults)
    server.inject(*faults)
    # No circuit breaker and generous retries: every fault but malformed JSON is retried, so the
    # number of fallbacks is exactly the number of malformed answers the server gave.
    optimizer = BPOOptimizer(
        TGIBackend(server.url),
        timeout=30,
        max_retries=20,
        cache_size=0,
        circuit_breaker=CircuitBreaker(failure_threshold=0),
    )
    prompts = [f"Question {i}: what is {i} squared, and why?" for i in range(total)]
    returned: dict[str, list[Any]] = {p: [] for p in prompts}

    async def one(prompt: str) -> None:
        result = await optimizer.aoptimize(prompt)
        returned[prompt].append(result)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(p) for p in prompts)), timeout=40)
    elapsed = time.perf_counter() - started

    assert all(len(results) == 1 for results in returned.values()), "lost or duplicated"
    results = {p: rs[0] for p, rs in returned.items()}
    fell_back = {p: r for p, r in results.items() if r.fell_back}
    for prompt, result in results.items():
        assert result.original == prompt
        expected = prompt if result.fell_back else prompt + SUFFIX
        assert result.optimized == expected, (prompt, result)
    assert len(fell_back) == malformed, {r.fallback_reason for r in fell_back.values()}
    assert all(r.fallback_reason.startswith("backend_error") for r in fell_back.values())
    stats = server.command("stats")
    assert stats["pending"] == 0
    # Each prompt asks once, plus one retry per retried fault (503, drop; a hang just answers late).
    retried = sum(f.kind in ("status", "drop_connection") for f in faults)
    assert stats["requests"] == total + retried
    assert elapsed < 20, elapsed
    print(f"1000 concurrent optimizations under {faulted} faults: {elapsed:.1f}s")
