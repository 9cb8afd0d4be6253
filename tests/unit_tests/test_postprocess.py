import pytest

from bpo_integrations.postprocess import clean_completion
from bpo_integrations.settings import AGGRESSIVE_CUT_MARKERS
from bpo_integrations.template import BPO_INSTRUCTION, format_bpo_prompt


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (format_bpo_prompt("hi") + " Say hello politely.</s>", "Say hello politely."),
        ("Optimized prompt: Explain gravity simply.", "Explain gravity simply."),
        ("**Improved prompt:** Explain gravity simply.", "Explain gravity simply."),
        ('"Explain gravity simply."', "Explain gravity simply."),
        ("Explain gravity [PROTECT]simply[/PROTECT].<|im_end|>", "Explain gravity simply."),
        (BPO_INSTRUCTION + "\nExplain gravity.", "Explain gravity."),
        ('"a" and "b"', '"a" and "b"'),
    ],
)
def test_clean_completion_strips_echoes_labels_and_markers(raw: str, expected: str) -> None:
    assert clean_completion(raw) == expected


def test_aggressive_cut_markers_cut_the_rewrite() -> None:
    raw = "Write a poem about spring. [KEEP the rhyme] [INSTRUCTION] extra"
    assert clean_completion(raw, cut_markers=AGGRESSIVE_CUT_MARKERS) == "Write a poem about spring."
