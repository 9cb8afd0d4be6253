"""The LiteLLM callback with the real LiteLLM: the SDK's ``acompletion`` and the LiteLLM proxy
started from a ``config.yaml``, both against the scripted OpenAI-compatible upstream."""

from __future__ import annotations

import os

# LiteLLM fetches its model price list from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

litellm = pytest.importorskip("litellm")

from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.proxy._types import UserAPIKeyAuth  # noqa: E402

from bpo_integrations import BPOOptimizer  # noqa: E402
from bpo_integrations.backends import CallableBackend  # noqa: E402
from bpo_integrations.errors import BackendError  # noqa: E402
from bpo_integrations.litellm import RECORD_KEY, BPOCallback, optimizer_from_env  # noqa: E402
from bpo_integrations.testing.servers import Fault, ScriptedServer  # noqa: E402

SUFFIX = " Explain step by step."
MASTER_KEY = "sk-litellm-master-test-key"
UPSTREAM_KEY = "sk-upstream-for-litellm"


class Recorder(CustomLogger):
    """A LiteLLM logger that keeps the metadata each successful call ended with.

    One instance for the module: LiteLLM keeps the first logger of a class it sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, Any]] = []

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time) -> None:
        self.metadata.append(dict(kwargs.get("litellm_params", {}).get("metadata") or {}))


@pytest.fixture
def upstream() -> Iterator[ScriptedServer]:
    with ScriptedServer(lambda text: f"Answer to: {text}", model_id="scripted-bpo") as server:
        yield server


RECORDER = Recorder()


@pytest.fixture
def callbacks() -> Iterator[list[Any]]:
    """``litellm.callbacks`` for one test: the recorder, and what the test puts before it."""
    previous = litellm.callbacks
    chosen: list[Any] = [RECORDER]
    RECORDER.metadata.clear()
    litellm.callbacks = chosen
    try:
        yield chosen
    finally:
        litellm.callbacks = previous


def optimizer(fn: Any = None) -> BPOOptimizer:
    return BPOOptimizer(CallableBackend(fn or (lambda p: p + SUFFIX)), cache_size=0)


async def ask(upstream: ScriptedServer, content: str, **options: Any) -> Any:
    return await litellm.acompletion(
        model="openai/scripted-bpo",
        api_base=upstream.url + "/v1",
        api_key=UPSTREAM_KEY,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        **options,
    )


async def wait_for(recorder: Recorder, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(recorder.metadata) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_sdk_acompletion_sends_the_rewrite_and_records_it(upstream, callbacks) -> None:
    recorder = RECORDER
    callbacks.insert(0, BPOCallback(optimizer()))
    response = await ask(upstream, "Why is the sky blue?", metadata={"app": "demo"})
    assert response.choices[0].message.content == "Answer to: Why is the sky blue?" + SUFFIX
    assert upstream.requests[-1][1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?" + SUFFIX},
    ]
    stream = await ask(upstream, "Name a fruit", stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "Answer to: Name a fruit" + SUFFIX
    await wait_for(recorder, 2)
    first = recorder.metadata[0]
    assert first["app"] == "demo"
    assert first[RECORD_KEY]["optimized"] is True
    assert first[RECORD_KEY]["rewrite"] == "Why is the sky blue?" + SUFFIX
    assert recorder.metadata[1][RECORD_KEY]["original"] == "Name a fruit"


async def test_sdk_fails_open_when_the_optimizer_fails(upstream, callbacks) -> None:
    def broken(prompt: str) -> str:
        raise BackendError("optimizer down")

    recorder = RECORDER
    callbacks.insert(0, BPOCallback(optimizer(broken)))
    response = await ask(upstream, "Still answer me")
    assert response.choices[0].message.content == "Answer to: Still answer me"
    await wait_for(recorder, 1)
    record = recorder.metadata[0][RECORD_KEY]
    assert record["optimized"] is False
    assert record["fallback_reason"].startswith("backend_error: optimizer down")


async def test_sdk_opt_out_opt_in_and_skipped_models(upstream, callbacks) -> None:
    callbacks.insert(0, BPOCallback(optimizer(), skip_models=["openai/skip*"]))
    await ask(upstream, "untouched", metadata={"bpo": "off"})
    assert upstream.requests[-1][1]["messages"][-1]["content"] == "untouched"
    await ask(upstream, "rewritten")
    assert upstream.requests[-1][1]["messages"][-1]["content"] == "rewritten" + SUFFIX
    callbacks[0] = BPOCallback(optimizer(), opt_in=True)
    await ask(upstream, "not opted in")
    assert upstream.requests[-1][1]["messages"][-1]["content"] == "not opted in"
    await ask(upstream, "opted in", metadata={"bpo": "on"})
    assert upstream.requests[-1][1]["messages"][-1]["content"] == "opted in" + SUFFIX


async def test_proxy_hook_per_key_team_and_request_settings() -> None:
    callback = BPOCallback(optimizer(), skip_models=["gpt-4o*"])

    def body(**extra: Any) -> dict[str, Any]:
        return {"model": "llama", "messages": [{"role": "user", "content": "Hi"}], **extra}

    key_off = UserAPIKeyAuth(api_key="k1", metadata={"bpo": "off"})
    data = await callback.async_pre_call_hook(key_off, None, body(), "completion")
    assert data["messages"][0]["content"] == "Hi"
    assert data["metadata"][RECORD_KEY]["skipped"] == "opt_out"
    request_on = body(metadata={"bpo": True})
    data = await callback.async_pre_call_hook(key_off, None, request_on, "acompletion")
    assert data["messages"][0]["content"] == "Hi" + SUFFIX  # the request's own setting wins
    skipped = await callback.async_pre_call_hook(
        UserAPIKeyAuth(api_key="k2"), None, body(model="gpt-4o-mini"), "completion"
    )
    assert skipped["metadata"][RECORD_KEY]["skipped"] == "model"
    embedding = {"model": "llama", "input": ["Hi"]}
    assert await callback.async_pre_call_hook(key_off, None, embedding, "embeddings") == embedding
    opt_in = BPOCallback(optimizer(), opt_in=True)
    team_on = UserAPIKeyAuth(api_key="k3", team_metadata={"bpo": "on"})
    data = await opt_in.async_pre_call_hook(team_on, None, body(), "completion")
    assert data["messages"][0]["content"] == "Hi" + SUFFIX
    data = await opt_in.async_pre_call_hook(
        UserAPIKeyAuth(api_key="k4"), None, body(), "completion"
    )
    assert data["metadata"][RECORD_KEY]["skipped"] == "not_opted_in"


def test_the_environment_names_the_optimizer_or_the_problem() -> None:
    with pytest.raises(ValueError, match="BPO_TIMEOUT"):
        optimizer_from_env(
            {"BPO_TIMEOUT": "soon", "BPO_BACKEND": "tgi", "BPO_ENDPOINT": "http://h"}
        )
    with pytest.raises(ValueError, match="--backend tgi needs --endpoint"):
        optimizer_from_env({"BPO_BACKEND": "tgi"})
    built = optimizer_from_env(
        {"BPO_BACKEND": "tgi", "BPO_ENDPOINT": "http://h:8080", "BPO_TIMEOUT": "3"}
    )
    assert built.timeout == 3.0 and built.backend.name == "tgi"
    with pytest.raises(TypeError, match="list of patterns"):
        BPOCallback(optimizer(), skip_models="gpt-4o*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiteLLMProxy:
    def __init__(self, url: str, upstream: ScriptedServer, optimizer: ScriptedServer, log: Path):
        self.url = url
        self.upstream = upstream
        self.optimizer = optimizer
        self.log = log

    def chat(self, content: str, **body: Any) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={"model": "scripted", "messages": [{"role": "user", "content": content}], **body},
            timeout=60,
        )


@pytest.fixture(scope="module")
def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    """A real LiteLLM proxy (``litellm --config``) whose callback is ``proxy_handler``, with TGI's
    API (the scripted server) as the optimizer, and the scripted server as the model."""
    root = tmp_path_factory.mktemp("litellm")
    upstream = ScriptedServer(lambda text: f"Answer to: {text}", model_id="scripted-bpo").start()

    def rewrite(raw_prompt: str) -> str:  # the BPO template in, the rewrite of its prompt out
        return raw_prompt.split("\n", 1)[1].rsplit(" [/INST]", 1)[0] + SUFFIX

    optimizer_server = ScriptedServer(rewrite).start()
    config = root / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: scripted\n"
        "    litellm_params:\n"
        "      model: openai/scripted-bpo\n"
        f"      api_base: {upstream.url}/v1\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "litellm_settings:\n"
        "  callbacks: bpo_integrations.litellm.proxy_handler\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # TGI client: local only
    env.update(
        BPO_BACKEND="tgi",
        BPO_ENDPOINT=optimizer_server.url,
        BPO_TIMEOUT="10",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    port = free_port()
    log = root / "litellm.log"
    command = [str(Path(sys.executable).parent / "litellm"), "--config", str(config)]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health/liveliness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the LiteLLM proxy did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield LiteLLMProxy(url, upstream, optimizer_server, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        upstream.stop()
        optimizer_server.stop()


def test_litellm_proxy_rewrites_once_per_request(litellm_proxy: LiteLLMProxy) -> None:
    before = len(litellm_proxy.optimizer.requests)
    response = litellm_proxy.chat("Why is the sky blue?")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == (
        "Answer to: Why is the sky blue?" + SUFFIX
    )
    sent = litellm_proxy.upstream.requests[-1][1]
    assert sent["messages"] == [{"role": "user", "content": "Why is the sky blue?" + SUFFIX}]
    assert litellm_proxy.upstream.request_headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert (
        len(litellm_proxy.optimizer.requests) == before + 1
    )  # the deployment hook did not redo it


def test_litellm_proxy_streams_and_honours_request_metadata(litellm_proxy: LiteLLMProxy) -> None:
    streamed = litellm_proxy.chat("Name a colour", stream=True)
    assert streamed.status_code == 200
    assert "data: [DONE]" in streamed.text
    assert litellm_proxy.upstream.requests[-1][1]["messages"][0]["content"] == (
        "Name a colour" + SUFFIX
    )
    litellm_proxy.chat("leave me", metadata={"bpo": "off"})
    assert litellm_proxy.upstream.requests[-1][1]["messages"][0]["content"] == "leave me"


def test_litellm_proxy_fails_open_when_the_optimizer_fails(litellm_proxy: LiteLLMProxy) -> None:
    litellm_proxy.optimizer.inject(Fault("status", status=500))
    response = litellm_proxy.chat("Answer anyway")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Answer to: Answer anyway"
    assert "kept the original prompt (backend_error" in litellm_proxy.log.read_text()
