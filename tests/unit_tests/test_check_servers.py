"""``bpo check`` tells TGI, vLLM, SGLang and llama.cpp apart by their documented routes.

Each kind is a real HTTP server on 127.0.0.1 (``ScriptedServer`` with that server's ``flavor``:
TGI's ``/info``, vLLM's ``/version``, SGLang's ``/server_info``, llama.cpp's ``/props``, and
``/v1/models`` with LoRA modules); ``bpo serve`` is checked in ``test_serve_cli.py`` and a real
vLLM in ``test_vllm_server.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("openai")

from typer.testing import CliRunner

from bpo_integrations.cli import app as cli
from bpo_integrations.template import BPO_INSTRUCTION
from bpo_integrations.testing.servers import ScriptedServer

REWRITE = "Summarise the Harry Potter books: plot, main characters and themes."


def _check(*args: str) -> Any:
    return CliRunner().invoke(cli, ["check", *args], env={"BPO_API_KEY": None})


def _rewrite(text: str) -> str:
    assert BPO_INSTRUCTION in text and "Tell me about Harry Potter" in text, text
    return REWRITE


def _line(output: str, label: str) -> str:
    match = re.search(rf"^{label}\s+(.*)$", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


@pytest.mark.parametrize(
    ("flavor", "server_line"),
    [
        ("vllm", "vLLM 0.32.0"),
        ("sglang", "SGLang 0.5.23"),
        ("llamacpp", "llama.cpp b7000-scripted"),
    ],
)
def test_openai_compatible_servers_are_named_and_optimize_on_completions(
    flavor: str, server_line: str
) -> None:
    with ScriptedServer(_rewrite, model_id="THUDM/BPO", flavor=flavor) as server:  # type: ignore[arg-type]
        url, result = server.url, _check("--endpoint", server.url)
        paths = server.paths()
    assert result.exit_code == 0, result.output
    assert _line(result.output, "server") == server_line
    assert _line(result.output, "model") == "THUDM/BPO (model)"
    assert _line(result.output, "backend") == (f"OpenAIBackend('THUDM/BPO', base_url='{url}/v1')")
    assert _line(result.output, "  optimized") == REWRITE
    assert paths[-1] == "/v1/completions" and "/info" in paths


def test_tgi_is_named_with_its_model_info() -> None:
    with ScriptedServer(_rewrite, model_id="THUDM/BPO") as server:
        url, result = server.url, _check("--endpoint", server.url)
        paths = server.paths()
    assert result.exit_code == 0, result.output
    assert _line(result.output, "server") == "TGI 3.3.4-scripted"
    assert _line(result.output, "model").startswith("THUDM/BPO (text-generation-router ")
    assert _line(result.output, "backend") == f"TGIBackend('{url}')"
    assert paths[:2] == ["/health", "/info"] and paths[-1] in ("/", "/generate")


def test_a_single_lora_module_is_what_gets_checked_and_model_picks_another() -> None:
    with ScriptedServer(_rewrite, model_id="base", flavor="vllm", lora_modules=["bpo"]) as server:
        lora = _check("--endpoint", server.url)
        lora_model = server.requests[-1][1]["model"]
        base = _check("--endpoint", server.url, "--model", "base")
        base_model = server.requests[-1][1]["model"]
        missing = _check("--endpoint", server.url, "--model", "other")
    assert lora.exit_code == 0, lora.output
    assert _line(lora.output, "lora") == "bpo (LoRA module on base)"
    assert lora_model == "bpo"
    assert base.exit_code == 0 and base_model == "base"
    assert missing.exit_code == 2
    assert "--model 'other' is not served" in missing.output
    assert "it serves ['base'] and LoRA modules ['bpo']" in missing.output
    assert "--enable-lora --lora-modules other=/path/to/adapter" in missing.output


def test_an_endpoint_ending_in_v1_is_checked_at_the_root() -> None:
    with ScriptedServer(_rewrite, model_id="THUDM/BPO", flavor="vllm") as server:
        url, result = server.url, _check("--endpoint", server.url + "/v1/")
        first = server.paths()[0]
    assert result.exit_code == 0, result.output
    assert _line(result.output, "endpoint") == f"{url} (drop /v1: --endpoint is the server's root)"
    assert first == "/health"


def test_model_is_refused_for_a_tgi_server() -> None:
    with ScriptedServer(_rewrite) as server:
        result = _check("--endpoint", server.url, "--model", "x")
    assert result.exit_code == 2
    assert "--model applies to OpenAI-compatible servers; TGI serves one" in result.output
