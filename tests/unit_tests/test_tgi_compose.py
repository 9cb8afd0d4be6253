"""``examples/tgi/docker-compose.yml`` parses, uses only real TGI launcher flags, and is consistent."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tgi"
COMPOSE = EXAMPLE / "docker-compose.yml"

# `text-generation-launcher --help`, from TGI's docs/source/reference/launcher.md (TGI 3.x).
TGI_LAUNCHER_FLAGS = {
    "--model-id", "--revision", "--validation-workers", "--sharded", "--num-shard",
    "--quantize", "--speculate", "--dtype", "--kv-cache-dtype", "--trust-remote-code",
    "--max-concurrent-requests", "--max-best-of", "--max-stop-sequences", "--max-top-n-tokens",
    "--max-input-tokens", "--max-input-length", "--max-total-tokens", "--waiting-served-ratio",
    "--max-batch-prefill-tokens", "--max-batch-total-tokens", "--max-waiting-tokens",
    "--max-batch-size", "--cuda-graphs", "--hostname", "--port", "--shard-uds-path",
    "--master-addr", "--master-port", "--huggingface-hub-cache", "--weights-cache-override",
    "--disable-custom-kernels", "--cuda-memory-fraction", "--rope-scaling", "--rope-factor",
    "--json-output", "--otlp-endpoint", "--otlp-service-name", "--cors-allow-origin",
    "--api-key", "--watermark-gamma", "--watermark-delta", "--ngrok", "--ngrok-authtoken",
    "--ngrok-edge", "--tokenizer-config-path", "--disable-grammar-support", "--env",
    "--max-client-batch-size", "--lora-adapters", "--usage-stats", "--payload-limit",
    "--enable-prefill-logprobs",
}  # fmt: skip
TGI_BOOLEAN_FLAGS = {
    "--trust-remote-code", "--disable-custom-kernels", "--json-output", "--ngrok",
    "--disable-grammar-support", "--env", "--enable-prefill-logprobs",
}  # fmt: skip
TGI_QUANTIZE_VALUES = {
    "awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
    "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8",
}  # fmt: skip
LLAMA2_CONTEXT = 4096  # THUDM/BPO is a Llama-2-7b-chat fine-tune


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def launcher_args(compose: dict[str, Any]) -> dict[str, str | None]:
    """The TGI service's ``command`` as ``{flag: value}`` (``None`` for boolean flags)."""
    command = [str(part) for part in compose["services"]["tgi"]["command"]]
    args: dict[str, str | None] = {}
    index = 0
    while index < len(command):
        flag = command[index]
        assert flag.startswith("--"), f"expected a flag, got {flag!r} in {command}"
        if flag in TGI_BOOLEAN_FLAGS:
            args[flag], index = None, index + 1
        else:
            args[flag], index = command[index + 1], index + 2
    return args


def test_tgi_service_uses_only_real_launcher_flags(launcher_args: dict[str, str | None]) -> None:
    unknown = set(launcher_args) - TGI_LAUNCHER_FLAGS
    assert not unknown, f"not text-generation-launcher options: {sorted(unknown)}"
    assert launcher_args["--model-id"] == "${BPO_MODEL_ID:-THUDM/BPO}"
    assert int(launcher_args["--speculate"] or 0) > 0  # n-gram speculation is on


def test_token_limits_are_consistent(launcher_args: dict[str, str | None]) -> None:
    max_input = int(launcher_args["--max-input-tokens"] or 0)
    max_total = int(launcher_args["--max-total-tokens"] or 0)
    prefill = int(launcher_args["--max-batch-prefill-tokens"] or 0)
    assert 0 < max_input < max_total <= LLAMA2_CONTEXT
    assert prefill >= max_input  # TGI refuses to start otherwise
    assert max_total - max_input >= 512  # room for the optimizer's default rewrite length


def test_tgi_service_is_deployable_on_a_gpu(
    compose: dict[str, Any], launcher_args: dict[str, str | None]
) -> None:
    tgi = compose["services"]["tgi"]
    assert tgi["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    (device,) = tgi["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert tgi["shm_size"]
    assert any(volume.endswith(":/data") for volume in tgi["volumes"])  # TGI's weights cache
    port = launcher_args["--port"]
    assert f"http://127.0.0.1:{port}/health" in tgi["healthcheck"]["test"]
    assert tgi["ports"] == [f"127.0.0.1:8080:{port}"]  # reachable from this host only
    # QUANTIZE is TGI's own environment variable for --quantize, passed through when set
    assert "QUANTIZE" in tgi["environment"]
    assert "--quantize" not in launcher_args


def test_chain_service_waits_for_tgi_and_runs_the_example(
    compose: dict[str, Any], launcher_args: dict[str, str | None]
) -> None:
    chain = compose["services"]["chain"]
    assert chain["depends_on"]["tgi"]["condition"] == "service_healthy"
    assert chain["environment"]["BPO_ENDPOINT"] == f"http://tgi:{launcher_args['--port']}"
    assert "examples/tgi/chain.py" in " ".join(chain["command"])
    script = ast.parse((EXAMPLE / "chain.py").read_text(encoding="utf-8"))
    imports = {
        (node.module, alias.name)
        for node in ast.walk(script)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("bpo_integrations.backends.tgi", "TGIBackend") in imports


@pytest.mark.parametrize("quantize", [None, "bitsandbytes-nf4"])
def test_docker_compose_accepts_the_file(quantize: str | None) -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("the docker compose client is not installed")
    assert quantize is None or quantize in TGI_QUANTIZE_VALUES
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **({"QUANTIZE": quantize} if quantize else {})}
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["tgi"]["environment"].get("QUANTIZE") == quantize
