"""The BPO optimizer's prompt format, exactly as the paper's model ``THUDM/BPO`` was trained on."""

from __future__ import annotations

BPO_INSTRUCTION = (
    "You are an expert prompt engineer. Please help me improve this prompt to get a more helpful "
    "and harmless response:"
)
"""The instruction that precedes the user's prompt; also the user message for chat-served models."""

BPO_TEMPLATE = "[INST] " + BPO_INSTRUCTION + "\n{prompt} [/INST]"
"""The raw template: ``[INST] <instruction>\\n{prompt} [/INST]``."""


def format_bpo_prompt(prompt: str) -> str:
    """Wrap ``prompt`` in the raw BPO template (for TGI ``/generate`` and local generation).

    Example:
        >>> format_bpo_prompt("Tell me about Harry Potter")[-35:]
        '\\nTell me about Harry Potter [/INST]'
    """
    return BPO_TEMPLATE.format(prompt=prompt)


def format_bpo_message(prompt: str) -> str:
    """The user message for a BPO model behind a chat API (its chat template adds ``[INST]``)."""
    return f"{BPO_INSTRUCTION}\n{prompt}"


def join_context(instruction: str, context: str | None) -> str:
    """Put an untouched ``context`` after the instruction, as the BPO data does (newline-joined)."""
    if not context:
        return instruction
    return f"{instruction}\n{context}"
