"""The DRPO prompts carry what the judge and optimizer need, and their answers parse robustly."""

from __future__ import annotations

import json

import pytest
from bpo_trainer.drpo.parsing import (
    Evaluation,
    parse_aspect_selection,
    parse_json_object,
    parse_revision,
    parse_score_value,
    parse_scores,
)
from bpo_trainer.drpo.prompts import (
    ASPECTS,
    DEFAULT_ASPECTS,
    propose_system_prompt_messages,
    revise_response_messages,
    score_messages,
    select_aspects_messages,
)

SCORES = {
    "Helpfulness": {"rationale": "ok", "score": 4},
    "Depth": {"rationale": "thin", "score": 2},
}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(SCORES),
        "Here you go:\n```json\n" + json.dumps(SCORES, indent=2) + "\n```\nHope it helps.",
        "```\n" + json.dumps(SCORES) + "\n```",
        "Scores: " + json.dumps(SCORES) + " -- done",
        str(SCORES),  # Python quotes
        json.dumps(SCORES, indent=2).replace('"score": 2', '"score": 2,'),  # trailing comma
    ],
)
def test_json_answers_are_read_in_every_usual_wrapping(text: str) -> None:
    assert parse_json_object(text) == SCORES


def test_unreadable_answers_give_none() -> None:
    for text in ("", "I'd rate it a 4.", "{broken: [", "[1, 2, 3]"):
        assert parse_json_object(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4, 4.0),
        (4.5, 4.5),
        ("5", 5.0),
        ("3/5", 3.0),
        ("[2]", 2.0),
        (" 4 (good)", 4.0),
        (0, None),
        (6, None),
        ("10/10", None),
        ("high", None),
        (None, None),
        (True, None),
        ("[score from 1 to 5]", None),
    ],
)
def test_score_values(value: object, expected: float | None) -> None:
    assert parse_score_value(value) == expected


def test_scores_match_aspects_by_any_spelling_and_report_what_is_missing() -> None:
    text = json.dumps(
        {
            "helpfulness": {"reason": "fine", "score": "4"},
            "critical_thinking": {"rationale": "shallow", "score": "2/5"},
            "Safety": {"score": "[score]"},
            "Creativity": {"score": 5},
        }
    )
    evaluation = parse_scores(text, ["Helpfulness", "Critical-Thinking", "Safety"])
    assert evaluation.scores == {"Helpfulness": 4.0, "Critical-Thinking": 2.0}
    assert evaluation.missing == ("Safety",) and evaluation.error is None
    assert evaluation.reward == 3.0 and not evaluation.perfect
    assert evaluation.rationales == {"Helpfulness": "fine", "Critical-Thinking": "shallow"}
    assert evaluation.feedback()["Helpfulness"] == {"rationale": "fine", "score": 4}
    assert Evaluation.from_dict(evaluation.to_dict()) == evaluation


def test_scores_in_a_scores_object_and_malformed_judgments() -> None:
    wrapped = parse_scores(
        '{"rationale": "r", "scores": {"depth": "5", "clarity": 5}}', ["Depth", "Clarity"]
    )
    assert wrapped.scores == {"Depth": 5.0, "Clarity": 5.0} and wrapped.perfect
    malformed = parse_scores("Clarity: 4, depth: 3", ["Depth", "Clarity"])
    assert not malformed.valid and malformed.reward is None
    assert malformed.error == "no JSON object in the judgment"
    assert parse_scores('{"Depth": {"score": 9}}', ["Depth"]).error == "no aspect has a 1-5 score"


def test_aspect_selection_canonicalises_bounds_and_falls_back() -> None:
    answer = json.dumps(
        {
            "aspects_selection": {
                "reasoning": "r",
                "selected_aspects": [
                    "helpfulness",
                    "Compliance with Instructions",
                    "cultural sensitivity",
                    "Humor",
                    "Depth",
                    "Safety",
                    "Clarity",
                ],
            }
        }
    )
    selection = parse_aspect_selection(answer, low=3, high=6)
    assert selection.aspects == (
        "Helpfulness",
        "Compliance",
        "Sensitivity",
        "Humor",
        "Depth",
        "Safety",
    )
    assert selection.error is None and selection.reason == "r"
    few = parse_aspect_selection('{"aspects_selection": {"selected_aspects": "Safety"}}', low=3)
    assert few.aspects == ("Safety", "Helpfulness", "Clarity")
    broken = parse_aspect_selection("Helpfulness and depth.")
    assert broken.aspects == DEFAULT_ASPECTS and broken.error


def test_revisions_are_read_from_json_or_start_end_markers() -> None:
    assert (
        parse_revision('{"new_response": "<START>\\nLine 1\\nLine 2\\n<END>"}', "new_response")
        == "Line 1\nLine 2"
    )
    assert parse_revision("Sure!\n<START>\nPlain text answer.\n<END>", "new_response") == (
        "Plain text answer."
    )
    assert (
        parse_revision('{"new_system_prompt": "Be kind.\\\\n- Be brief."}', "new_system_prompt")
        == "Be kind.\n- Be brief."
    )
    assert parse_revision('{"thought": "no prompt here"}', "new_system_prompt") is None
    assert parse_revision('{"new_response": "   "}', "new_response") is None


def test_prompts_carry_their_inputs_verbatim_even_with_braces() -> None:
    query, output = 'Format {name} as JSON: {"a": 1}', "Use {{double}} braces {x}"
    selection = select_aspects_messages(query, critic=True)[0]["content"]
    assert f"## Query\n{query}\n" in selection and "at least 3 and at most 6" in selection
    assert all(f"- {name}: " in selection for name in ASPECTS)
    assert "at least 2 and at most 5" in select_aspects_messages(query, critic=False)[0]["content"]

    score = score_messages(query, output, ["Safety", "Humor"], "why", critic=False)[0]["content"]
    assert f"## Output\n{output}\n\n## Aspects\n- Safety: " in score
    assert "- Humor: as the selection reasoning says." in score
    template = score.rsplit("```", 2)[1]
    assert set(json.loads(template)) == {"Safety", "Humor"}

    feedback = {"Depth": {"rationale": "thin", "score": 2}}
    revise = revise_response_messages(query, output, feedback)[0]["content"]
    assert f"## Current response\n{output}\n" in revise and '"rationale": "thin"' in revise
    assert revise.rstrip().endswith('"new_response": "[the new response]"\n}\n```')

    propose = propose_system_prompt_messages("P2", query, output, feedback, ["P0", "P1", "P2"])
    text = propose[0]["content"]
    assert "--- Version 1 ---\nP0\n--- Version 2 ---\nP1\n--- Current version ---\nP2" in text
    assert '"new_system_prompt"' in text and f"## A query\n{query}\n" in text
