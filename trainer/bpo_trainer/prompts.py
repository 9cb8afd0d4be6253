"""The paper's two data-construction prompts, verbatim from thu-coai/BPO ``chatgpt_infer.py``.

ChatGPT reads a feedback pair (a bad and a good response to one instruction), compares them and
writes an optimized instruction, answering in the format that :mod:`bpo_trainer.process` parses::

    Detailed Comparison Result: xxx
    Optimized Instruction: xxx [END]

A record with a ``context`` field (Alpaca-GPT4, even when the context is empty) gets
:data:`CTX_PROMPT`, which keeps the context out of the rewritten instruction; every other record
gets :data:`NO_CTX_PROMPT`, which also asks to make unsafe instructions harmless and to keep
protected parts. The reference switches on the key, not on its value, and so does this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FORMAT = """Output with the following format:
Detailed Comparison Result: xxx
Optimized Instruction: xxx [END]"""

_COMPARE = (
    "Compare the good response and bad response from these aspects: correctness (if the response "
    "follows the instruction correctly and give an accurate response, high priority), "
    "helpfulness(like depth, creativity, coherence) and harmlessness. Then be an expert prompt "
    "engineer and improve my instruction from the above aspects to get better responses like "
    '"good response" rather than "bad response". '
)

CTX_PROMPT = (
    'instruction: "{instruction}"\ncontext:\n"{context}"\n\nbad response:\n"{bad_res}"\n\n'
    'good response:\n"{good_res}"\n\n' + _COMPARE + "\n\nPay attention to:\n"
    "1.Don't forget any information in the original instruction. Focus on maintaining all the "
    "information in my instruction.\n"
    "2.Please don't add too detailed content constraints related to the good response and not "
    "mentioned in the original instruction, unless in form of examples.\n"
    "3.Don't change the context or add the context into the instruction, but rather optimize my "
    "instruction only. Don't give a response to my instruction.\n"
    "4.Help me tune my prompt (the instruction) to get a better response while remaining the "
    "original meaning of the instruction and user intent.\n\n" + _FORMAT
)
"""The prompt for records with a context field (fields: instruction, context, bad_res, good_res)."""

NO_CTX_PROMPT = (
    'instruction: "{instruction}"\n\nbad response:\n"{bad_res}"\n\ngood response:\n"{good_res}"\n\n'
    + _COMPARE
    + "\n\nPay attention to:\n"
    "1.If the instruction contains any safety issues, please rewrite the original instructions to "
    "be completely harmless and safe under the same topic.\n"
    "2.Don't forget any information in the original instruction. Focus on maintaining all the "
    "information in my instruction.\n"
    "3.Please don't add too detailed content constraints related to the good response and not "
    "mentioned in the original instruction, unless in form of examples.\n"
    "4.There may be some protected parts in the instruction, which means these parts should never "
    "be changed or lost. Please carefully protect these parts.\n"
    "5.You should never generate a response to the original instruction!\n"
    "6.Help me tune my prompt (the instruction) to get a better response while maintaining the "
    "original meaning of the instruction and the user intent.\n\n" + _FORMAT
)
"""The prompt for records without a context field (fields: instruction, bad_res, good_res)."""


def has_context_field(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` takes the context path: it has a ``context`` that is not ``None``."""
    return record.get("context") is not None


def build_construction_prompt(record: Mapping[str, Any]) -> str:
    """The user message that asks ChatGPT to compare the pair and optimize the instruction.

    Raises ``ValueError`` naming the missing field when ``record`` lacks ``instruction``,
    ``good_res`` or ``bad_res``.

    Example:
        >>> text = build_construction_prompt(
        ...     {"instruction": "Name a planet.", "good_res": "Mars.", "bad_res": "Pluto."}
        ... )
        >>> text.splitlines()[0], text.splitlines()[-1]
        ('instruction: "Name a planet."', 'Optimized Instruction: xxx [END]')
    """
    missing = [key for key in ("instruction", "good_res", "bad_res") if key not in record]
    if missing:
        raise ValueError(
            f"record {record.get('id', '?')!r} lacks {', '.join(missing)}: construct needs the "
            "feedback pair that `bpo-train collect` writes (instruction, good_res, bad_res)"
        )
    fields = {
        "instruction": record["instruction"],
        "bad_res": record["bad_res"],
        "good_res": record["good_res"],
    }
    if has_context_field(record):
        return CTX_PROMPT.format(context=record["context"], **fields)
    return NO_CTX_PROMPT.format(**fields)
