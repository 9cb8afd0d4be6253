"""``bpo proxy`` as a user runs it: a real process in front of a scripted upstream, with a TGI
optimizer; no torch loaded for it; its bad options named; its logs free of the upstream key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import openai
import pytest
from typer.testing import CliRunner

from bpo_integrations.cli import app
from bpo_integrations.testing.servers import ScriptedServer

UPSTREAM_KEY = "sk-upstream-key-for-the-cli-test"
PROXY_KEY = "sk-proxy-key-for-the-cli-test"
SUFFIX = " Answer in detail."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_importing_the_proxy_loads_no_torch_and_its_light_parts_no_web_framework() -> None:
    light = modules_after("import bpo_integrations.proxy, bpo_integrations.cli")
    assert not light & {"torch", "transformers", "fastapi", "uvicorn", "httpx2"}
    app_modules = modules_after(
        "import bpo_integrations.proxy.server, bpo_integrations.backends.tgi"
    )
    assert "fastapi" in app_modules and "torch" not in app_modules


def test_the_proxy_command_end_to_end(tmp_path: Path) -> None:
    def rewrite(raw_prompt: str) -> str:  # TGI gets the BPO template; answer the rewrite
        return raw_prompt.split("\n", 1)[1].rsplit(" [/INST]", 1)[0] + SUFFIX

    with (
        ScriptedServer(lambda text: f"Answer to: {text}", model_id="m") as upstream,
        ScriptedServer(rewrite) as optimizer,
    ):
        port, upstream_url = free_port(), upstream.url
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "BPO_PROXY_UPSTREAM_API_KEY": UPSTREAM_KEY}
        log = tmp_path / "proxy.log"
        command = [str(Path(sys.executable).parent / "bpo"), "proxy"]
        command += ["--upstream", upstream.url + "/v1", "--api-key", PROXY_KEY]
        command += ["--backend", "tgi", "--endpoint", optimizer.url, "--port", str(port)]
        command += ["--skip-models", "gpt-4o*,o1*", "--log-level", "debug"]
        with log.open("w") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            client = openai.OpenAI(base_url=url + "/v1", api_key=PROXY_KEY, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "Why?"}]
            )
            assert raw.parse().choices[0].message.content == "Answer to: Why?" + SUFFIX
            assert unquote(raw.headers["x-bpo-rewrite"]) == "Why?" + SUFFIX
            assert upstream.request_headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
            with pytest.raises(openai.NotFoundError):  # the upstream's 404, passed on
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "as is"}]
                )
            assert upstream.requests[-1][1]["messages"][0]["content"] == "as is"
            if sys.platform == "linux":  # what the process mapped: no libtorch
                maps = Path(f"/proc/{process.pid}/maps").read_text()
                assert "libtorch" not in maps and "site-packages/torch" not in maps
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
    text = log.read_text()
    assert code in (0, -signal.SIGTERM), text  # uvicorn re-raises the signal it drained on
    assert f"http://127.0.0.1:{port}/v1 -> {upstream_url}/v1" in text
    assert UPSTREAM_KEY not in text and PROXY_KEY not in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--upstream", "localhost:8000"], "must be an http(s) URL"),
        (["--upstream", "http://h/v1", "--backend", "tgi"], "--backend tgi needs --endpoint"),
        (["--upstream", "http://h/v1", "--upstream-timeout", "0"], "upstream_timeout"),
        (["--upstream", "http://h/v1", "--backend", "openai"], "--backend openai needs --model"),
    ],
)
def test_bad_options_are_named(options: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["proxy", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output
