"""GGUF files for the inference engine: a base model's GGUF with new weights merged in.

The engine reads models as GGUF (see :mod:`bpo_integrations.inference.prepare`). A BPO optimizer is
usually a base model plus a LoRA adapter, or a base model fine-tuned in full; both become one GGUF
here by taking the base model's GGUF as the template (its metadata, tokenizer and tensor layout are
kept) and writing every weight matrix anew: the base's weights de-quantized, or the fine-tuned
folder's, plus the adapter's ``B @ A * scale``. Only numpy, ``gguf`` and ``safetensors`` are needed,
so preparing the default optimizer imports no torch.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

Precision = Literal["f16", "q8_0", "q4_0"]
"""How weight matrices are stored: float16, or llama.cpp's 8-bit / 4-bit block quantization."""

PRECISIONS: tuple[Precision, ...] = ("f16", "q8_0", "q4_0")

DEFAULT_PRECISION: Precision = "q8_0"
"""The precision a model is prepared at unless one is asked for: the fastest here that keeps the
default optimizer's dev-split quality (BENCHMARKS.md's precision section). Greedy rewrites differ
from float's where the model was near a tie; ``"f16"`` gives float's own."""

_FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_0": 2}  # llama.cpp's LlamaFileType values


class GGUFMergeError(ValueError):
    """The adapter or the fine-tuned weights do not fit the base model's GGUF."""


def read_architecture(path: str | Path) -> dict[str, Any]:
    """The base facts of a GGUF model: architecture, layers, heads, vocabulary size."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())

    def value(key: str, default: Any = None) -> Any:
        field = reader.fields.get(f"{arch}.{key}")
        return default if field is None else field.contents()

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "block_count": int(value("block_count")),
        "head_count": int(value("attention.head_count")),
        "head_count_kv": int(value("attention.head_count_kv", value("attention.head_count"))),
        "embedding_length": int(value("embedding_length")),
        "context_length": int(value("context_length", 0)),
        "vocab_size": len(tokens.data) if tokens is not None else None,
    }


def write_merged_gguf(
    base: str | Path,
    out: str | Path,
    *,
    precision: Precision,
    adapter: str | Path | None = None,
    weights_dir: str | Path | None = None,
) -> Path:
    """Write ``base`` to ``out`` with the adapter merged in and the weights stored at ``precision``.

    Args:
        base: the base model's GGUF file (any tensor type ``gguf`` can de-quantize).
        out: the GGUF file to write.
        precision: the storage type of the weight matrices (norms stay float32).
        adapter: a PEFT LoRA adapter folder trained on the base model.
        weights_dir: a transformers folder (``model.safetensors``) with the same architecture as
            the base, whose weights replace the base's (a model fine-tuned in full).
    """
    import gguf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    reader = gguf.GGUFReader(base)
    facts = read_architecture(base)
    names = gguf.TensorNameMap(_model_arch(facts["architecture"]), facts["block_count"])
    replaced = _hf_weights(Path(weights_dir), names, facts) if weights_dir is not None else {}
    deltas: dict[str, Callable[[], Any]] = {}
    if adapter is not None:
        deltas, saved = _lora_deltas(Path(adapter), names, facts)
        replaced.update(saved)  # modules the adapter trained in full (modules_to_save)
    present = {t.name for t in reader.tensors}
    # A base with tied embeddings has no output.weight; a fine-tune (or a merge) may untie them.
    untied = replaced.pop("output.weight", None) if "output.weight" not in present else None
    unknown = set(deltas) - present
    if unknown:
        raise GGUFMergeError(
            f"the adapter {adapter} changes weights the base model {Path(base).name} does not "
            f"have: {', '.join(sorted(unknown)[:3])}"
        )
    writer = gguf.GGUFWriter(str(out), arch=facts["architecture"])
    _copy_metadata(reader, writer, precision)
    _write_tensors(reader, writer, precision, replaced, deltas, untied)
    if replaced:
        raise GGUFMergeError(
            f"{weights_dir} has weights the base model does not: {', '.join(sorted(replaced)[:3])}"
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _copy_metadata(reader: Any, writer: Any, precision: Precision) -> None:
    """Every key of the base GGUF but the reader's own, with the file type of ``precision``."""
    import gguf

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_file_type(_FILE_TYPES[precision])
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)


def _write_tensors(
    reader: Any,
    writer: Any,
    precision: Precision,
    replaced: dict[str, Callable[[], Any]],
    deltas: dict[str, Callable[[], Any]],
    untied: Callable[[], Any] | None,
) -> None:
    """Add each base tensor to ``writer``: replaced or de-quantized, plus its delta, stored at
    ``precision``; then the untied output head unless it equals the embeddings. The replacements
    used are popped from ``replaced``."""
    import gguf
    import numpy as np

    storage = getattr(gguf.GGMLQuantizationType, precision.upper())

    def add(name: str, array: np.ndarray) -> None:
        if array.ndim == 2 and _quantizable(array, storage):
            writer.add_tensor(name, gguf.quants.quantize(array, storage), raw_dtype=storage)
        else:
            writer.add_tensor(name, array)

    embeddings = None
    for tensor in reader.tensors:
        if tensor.name in replaced:
            array = replaced.pop(tensor.name)()
        else:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, dtype=np.float32)
        if tensor.name in deltas:
            array = array + deltas[tensor.name]()
        if tensor.name == "token_embd.weight":
            embeddings = array
        add(tensor.name, array)
    if untied is not None:
        head = np.asarray(untied(), dtype=np.float32)
        if embeddings is None or not np.array_equal(head, embeddings):
            add("output.weight", head)


def _model_arch(arch: str) -> Any:
    import gguf

    for model_arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return model_arch
    raise GGUFMergeError(f"unknown GGUF architecture {arch!r}")


def _quantizable(array: np.ndarray, storage: Any) -> bool:
    import gguf

    block, _ = gguf.GGML_QUANT_SIZES[storage]
    return bool(array.shape[-1] % block == 0)


def _gguf_name(names: Any, hf_name: str) -> str | None:
    name: str | None = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    return name


def _rotary_layout(name: str, array: np.ndarray, facts: dict[str, Any]) -> np.ndarray:
    """llama.cpp stores llama's q and k projections with their rows permuted for its RoPE kernel."""
    if facts["architecture"] != "llama":
        return array
    if name.endswith("attn_q.weight"):
        heads = facts["head_count"]
    elif name.endswith("attn_k.weight"):
        heads = facts["head_count_kv"]
    else:
        return array
    rows = array.shape[0]
    permuted: np.ndarray = (
        array.reshape(heads, 2, rows // heads // 2, *array.shape[1:])
        .swapaxes(1, 2)
        .reshape(array.shape)
    )
    return permuted


def _safetensors(folder: Path, prefix: str = "model") -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(name, load)`` for every tensor of a (possibly sharded) safetensors checkpoint."""
    from safetensors import safe_open

    index = folder / f"{prefix}.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / f"{prefix}.safetensors").is_file():
        files = [f"{prefix}.safetensors"]
    else:
        raise GGUFMergeError(f"{folder} has no {prefix}.safetensors")
    for file in files:
        handle: Any = safe_open(str(folder / file), framework="numpy")
        for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            yield name, functools.partial(_as_float32, handle, name)


def _as_float32(handle: Any, name: str) -> Any:
    import numpy as np

    try:
        return np.asarray(handle.get_tensor(name), dtype=np.float32)
    except TypeError as error:  # bfloat16: numpy has no such dtype
        raise GGUFMergeError(
            f"{name} is stored as bfloat16, which numpy cannot read: save the model in float32 "
            "or float16 (model.to(torch.float32).save_pretrained(...))"
        ) from error


def _hf_weights(folder: Path, names: Any, facts: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    weights: dict[str, Callable[[], Any]] = {}
    for hf_name, load in _safetensors(folder):
        target = _gguf_name(names, hf_name)
        if target is None:
            raise GGUFMergeError(f"{folder}: no GGUF tensor for {hf_name}")
        weights[target] = functools.partial(_load_in_gguf_layout, target, load, facts)
    return weights


def _load_in_gguf_layout(name: str, load: Callable[[], Any], facts: dict[str, Any]) -> Any:
    """The tensor ``load()`` reads, in the row order llama.cpp stores GGUF tensor ``name`` in."""
    return _rotary_layout(name, load(), facts)


def _lora_deltas(
    adapter: Path, names: Any, facts: dict[str, Any]
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """The ``B @ A * scale`` of each LoRA pair, and the modules the adapter trained in full, by
    GGUF tensor name (each to load when called)."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise GGUFMergeError(f"{adapter} is not a LoRA adapter (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise GGUFMergeError(f"{adapter}: only plain LoRA adapters can be merged")
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, Callable[[], Any]]] = {}
    saved: dict[str, Callable[[], Any]] = {}
    for name, load in _safetensors(adapter, prefix="adapter_model"):
        parts = [part for part in ("lora_A", "lora_B") if f".{part}." in name]
        if not parts:  # a module trained in full (modules_to_save)
            hf_name = name.removeprefix("base_model.model.").replace(".modules_to_save", "")
            target = _gguf_name(names, hf_name)
            if target is None:
                raise GGUFMergeError(f"{adapter}: no GGUF tensor for {hf_name}")
            saved[target] = functools.partial(_load_in_gguf_layout, target, load, facts)
            continue
        module = name.split(f".{parts[0]}.")[0].removeprefix("base_model.model.")
        pairs.setdefault(module, {})[parts[0]] = load
    deltas: dict[str, Callable[[], Any]] = {}
    for module, loads in pairs.items():
        if set(loads) != {"lora_A", "lora_B"}:
            raise GGUFMergeError(f"{adapter}: {module} lacks lora_A or lora_B")
        target = _gguf_name(names, f"{module}.weight")
        if target is None:
            raise GGUFMergeError(f"{adapter}: no GGUF tensor for {module}")

        def delta(loads: dict[str, Callable[[], Any]] = loads, target: str = target) -> Any:
            product = (loads["lora_B"]() @ loads["lora_A"]()) * scale
            if config.get("fan_in_fan_out"):
                product = product.T
            return _rotary_layout(target, product, facts)

        deltas[target] = delta
    return deltas, saved
