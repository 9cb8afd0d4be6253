"""Turn a raw completion of the optimizer model into a clean prompt."""

from __future__ import annotations

import re
from collections.abc import Iterable

from bpo_integrations.template import BPO_INSTRUCTION

_SPECIAL_TOKENS = re.compile(
    r"</s>|<s>|<\|im_end\|>|<\|im_start\|>(?:assistant|user|system)?|<\|endoftext\|>|<\|eot_id\|>"
)
_MARKERS = re.compile(r"\[(?:PROTECT|/PROTECT|KEEP|/KEEP|INSTRUCTION|/INSTRUCTION|INST|/INST)\]")
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:here is |here's )?(?:the |an |my )?"
    r"(?:optimi[sz]ed|improved|revised|rewritten|better)"
    r"(?: version of the)? (?:prompt|instruction|query)"
    r"\s*(?:is)?\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTE_PAIRS = {'"': '"', "“": "”", "'": "'"}


def clean_completion(text: str, *, cut_markers: Iterable[str] = ()) -> str:
    """Strip template echoes, special tokens, labels and markers from a raw optimizer completion.

    Example:
        >>> clean_completion("[/INST] Optimized prompt: Explain X step by step.</s>")
        'Explain X step by step.'
    """
    if "[/INST]" in text:
        text = text.rsplit("[/INST]", 1)[1]
    for marker in cut_markers:
        if marker and marker in text:
            text = text.split(marker, 1)[0]
    text = _SPECIAL_TOKENS.sub("", text)
    text = text.strip()
    if text.startswith(BPO_INSTRUCTION):
        text = text[len(BPO_INSTRUCTION) :]
    text = _MARKERS.sub("", text)
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTE_PAIRS and text[-1] == _QUOTE_PAIRS[text[0]]:
        inner = text[1:-1]
        if text[0] not in inner:
            text = inner.strip()
    return text
