"""The ``bpo serve`` and ``bpo check`` commands, on the tiny model.

``bpo serve`` runs as a real subprocess: options from the command line and from ``BPO_*``
environment variables, a free port, and a graceful drain of requests in flight on SIGTERM.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")

import httpx
from typer.testing import CliRunner

from bpo_integrations.cli import app as cli
from bpo_integrations.serve import ServeConfig
from bpo_integrations.serve.server import build_app, serve_in_thread

KEY = "check-key"
BPO = "import sys; from bpo_integrations.cli import app; sys.argv[0] = 'bpo'; app()"


@pytest.fixture(scope="module")
def url(tiny_llama_dir: Path) -> Iterator[str]:
    config = ServeConfig(
        model=str(tiny_llama_dir), served_model_name="tiny-bpo", api_key=KEY, max_total_tokens=512
    )
    with serve_in_thread(build_app(config)) as base_url:
        yield base_url


def _check(*args: str) -> Any:
    return CliRunner().invoke(cli, ["check", *args], env={"BPO_API_KEY": None})


def test_check_reports_health_model_and_one_optimization(url: str) -> None:
    result = _check("--endpoint", url, "--api-key", KEY, "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert re.search(r"^health\s+ok \(\d+ ms\)$", result.output, re.MULTILINE)
    assert re.search(r"^model\s+tiny-bpo \(bpo-serve ", result.output, re.MULTILINE)
    assert "max input 384 / total 512 tokens" in result.output
    assert re.search(r"^optimize\s+\d+\.\d\d s$", result.output, re.MULTILINE)
    assert "original   Tell me about Harry Potter" in result.output


def test_check_needs_the_key_of_a_protected_server(url: str) -> None:
    result = _check("--endpoint", url)
    assert result.exit_code == 2
    assert "wants an API key: pass --api-key or set BPO_API_KEY" in result.output


def test_check_explains_an_unreachable_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    result = _check("--endpoint", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}/health" in result.output
    assert "bpo serve --port 8080" in result.output


def test_serve_rejects_inconsistent_limits_before_loading_anything() -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--max-input-tokens", "512", "--max-total-tokens", "256"]
    )
    assert result.exit_code == 2
    assert "max_input_tokens (512) must be smaller than max_total_tokens (256)" in result.output


def test_sigterm_drains_requests_in_flight_then_exits(tiny_llama_dir: Path) -> None:
    env = {
        **os.environ,
        "BPO_MODEL": str(tiny_llama_dir),  # the model comes from the environment
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", BPO, "serve", "--port", "0", "--max-total-tokens", "256"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = _wait_for_url(process)
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        answers: list[httpx.Response] = []
        # long enough to be caught in flight (BPO_BATCH_WAIT_MS, which held it, is gone)
        body = {"inputs": "Tell me about Harry Potter", "parameters": {"max_new_tokens": 200}}
        client = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{base}/generate", json=body, timeout=60))
        )
        client.start()
        _wait_until_queued(base)
        process.send_signal(signal.SIGTERM)

        client.join(timeout=60)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].json()["generated_text"]
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
        log = process.stderr.read() if process.stderr else ""
        assert "Waiting for connections to close" in log or "Shutting down" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen[str]) -> str:
    """The server's URL, read from uvicorn's start-up line (``--port 0`` picks the port)."""
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return match.group(1)
    raise AssertionError("bpo serve did not start:\n" + "".join(seen))


def _wait_until_queued(base: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "bpo_serve_queue_size 1.0" in httpx.get(f"{base}/metrics", timeout=10).text:
            return
        time.sleep(0.02)
    raise AssertionError("the request never reached the server")


def test_config_docstring_example_runs() -> None:
    result = doctest.testmod(importlib.import_module("bpo_integrations.serve.config"))
    assert result.attempted > 0 and result.failed == 0
