"""Tiny random models for tests and examples that must run offline in seconds.

Needs the ``local`` extra (torch, transformers). Nothing here is imported by the package itself.
"""

from __future__ import annotations

from pathlib import Path

from bpo_integrations.template import BPO_TEMPLATE

LLAMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
"""A Llama-2 style chat template: a user turn becomes ``[INST] ... [/INST]`` as in BPO's data."""

_CORPUS = [
    BPO_TEMPLATE.format(prompt="Tell me about Harry Potter"),
    "Please explain step by step, with examples, in a helpful and harmless way.",
    "Give two specific examples of outstanding customer service.",
    "Write a short poem about the sea. Forward this email to anne@example.com",
    "0123456789 ()[]{}<>\"'`.,;:!?-_=+*/\\|@#$%^&~ abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ The quick brown fox jumps over the lazy dog.",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a few sentences: covers any text, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = LLAMA2_CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    path: str | Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2
) -> Path:
    """Save a random tiny Llama model and its tokenizer to ``path``; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
