"""The judge prompts are the paper's, byte for byte, and every verdict shape is parsed or flagged."""

from __future__ import annotations

import hashlib
import json

import pytest
from bpo_trainer.evaluate.judge import (
    ALPACA_RANKING_PROMPT,
    PAIR_V2_SYSTEM,
    PAIR_V2_TEMPLATE,
    alpaca_ranking_user_message,
    get_judge_prompt,
    parse_pair_v2,
    parse_ranking,
)
from bpo_trainer.evaluate.pipeline import (
    combine_orders,
    optimized_position,
    outcome_for_optimized,
)

# The ``pair-v2`` line of FastChat's judge_prompts.jsonl as thu-coai/BPO's gpt4_score.py embeds it
# (FastChat 2023; later revisions changed "position biases" to "positional biases").
_REFERENCE_PAIR_V2 = (
    '{"name": "pair-v2", "type": "pairwise", "system_prompt": "Please act as an impartial judge '
    "and evaluate the quality of the responses provided by two AI assistants to the user question "
    "displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. "
    "Begin your evaluation by comparing the two responses and provide a short explanation. Avoid "
    "any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible. After "
    "providing your explanation, output your final verdict by strictly following this format: "
    '\\"[[A]]\\" if assistant A is better, \\"[[B]]\\" if assistant B is better, and \\"[[C]]\\" '
    'for a tie.", "prompt_template": "[User Question]\\n{question}\\n\\n[The Start of Assistant '
    "A's Answer]\\n{answer_a}\\n[The End of Assistant A's Answer]\\n\\n[The Start of Assistant "
    'B\'s Answer]\\n{answer_b}\\n[The End of Assistant B\'s Answer]", "description": "Prompt '
    'for general questions", "category": "general", "output_format": "[[A]]"}'
)
# sha256 of alpaca_eval 0.2.6 src/alpaca_eval/evaluators_configs/claude_ranking/ranking_prompt.txt
_RANKING_SHA256 = "39f1e4fe151fa092a11fa809083afdf69cc066506c479dc3b34daf1be6766b4f"


def test_pair_v2_is_fastchats_text() -> None:
    reference = json.loads(_REFERENCE_PAIR_V2)
    assert reference["system_prompt"] == PAIR_V2_SYSTEM
    assert reference["prompt_template"] == PAIR_V2_TEMPLATE


def test_alpaca_ranking_prompt_is_byte_identical_to_alpaca_eval() -> None:
    digest = hashlib.sha256(ALPACA_RANKING_PROMPT.encode("utf-8")).hexdigest()
    assert digest == _RANKING_SHA256
    user = alpaca_ranking_user_message()
    assert user.startswith("I want you to create a leaderboard")
    assert user.endswith("the ranking that the majority of humans would give.")
    assert "Human:" not in user and "Assistant:" not in user


def test_pair_v2_messages_put_answer_a_first_and_keep_braces() -> None:
    judge = get_judge_prompt("pair-v2")
    system, user = judge.messages("Q {answer_b}?", "first {x}", "second")
    assert system == {"role": "system", "content": PAIR_V2_SYSTEM}
    assert user["role"] == "user"
    assert user["content"] == (
        "[User Question]\nQ {answer_b}?\n\n"
        "[The Start of Assistant A's Answer]\nfirst {x}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\nsecond\n[The End of Assistant B's Answer]"
    )


def test_ranking_messages_fill_instruction_and_outputs() -> None:
    (message,) = get_judge_prompt("alpaca-ranking").messages("Say hi", "hello", "hey")
    assert '"instruction": """Say hi""",' in message["content"]
    assert message["content"].index('"""hello"""') < message["content"].index('"""hey"""')
    assert get_judge_prompt("alpaca-ranking").default_max_tokens == 512


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ("[[A]]", "A"),
        ("Assistant B is more detailed.\n\n[[B]]", "B"),
        ("Both are equally good.\n\nFinal verdict: [[C]]", "tie"),
        ("Explanation...\n\n[[ b ]]", "B"),
        # The explanation echoes the format; the last paragraph decides, as in cal_gpt4_score.py.
        ('I will answer "[[A]]" if A is better, "[[B]]" if B is.\n\nVerdict: [[A]]', "A"),
        # A verdict at the end of a single paragraph.
        ("A is more accurate, so my verdict is [[A]].", "A"),
        # No paragraph break before the verdict, but one verdict in the whole text.
        ("Assistant A is better [[A]]\n\nThank you.", "A"),
    ],
)
def test_parse_pair_v2_verdicts(text: str, winner: str) -> None:
    verdict = parse_pair_v2(text)
    assert verdict.winner == winner
    assert verdict.error is None and verdict.valid


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty judgment"),
        ("   \n", "empty judgment"),
        ("Assistant A is better.", "no [[A]], [[B]] or [[C]] verdict"),
        ("Verdict: [A]", "no [[A]], [[B]] or [[C]] verdict"),
        ("[[D]]", "no [[A]], [[B]] or [[C]] verdict"),
        ("Explanation.\n\n[[A]] or [[B]]", "ambiguous: [[A]], [[B]] in the final verdict"),
        ("[[A]] vs [[C]] hmm\n\nno verdict here", "ambiguous: [[A]], [[C]] in the final verdict"),
    ],
)
def test_parse_pair_v2_malformed_is_invalid_with_reason(text: str, error: str) -> None:
    verdict = parse_pair_v2(text)
    assert verdict.winner is None and not verdict.valid
    assert verdict.error == error


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]", "A"),
        ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", "B"),
        ("[\n    {'model': 'model_1', 'rank': 2},\n    {'model': 'model_2', 'rank': 1}\n]", "B"),
        ('[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]', "tie"),
        # Chatty replies around the list: the entries are read from the text.
        (
            "Sure! Here is the ranking: [{'model': 'model_2', 'rank': 1}, "
            "{'model': 'model_1', 'rank': 2}] Hope this helps [really].",
            "B",
        ),
        ("[{'rank': 1, 'model': 'model_1'}, {'rank': 2, 'model': 'model_2'}]", "A"),
        ("[{'model': 'model_1', 'rank': '2'}, {'model': 'model_2', 'rank': '1'}]", "B"),
    ],
)
def test_parse_ranking_verdicts(text: str, winner: str) -> None:
    assert parse_ranking(text).winner == winner


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("model_1 is better", "no [{'model'"),
        ("[{'model': 'model_1', 'rank': 1}]", "names only ['model_1']"),
        ("[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", "ranks must be"),
        ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2'", "names only ['model_1']"),
    ],
)
def test_parse_ranking_malformed_is_invalid(text: str, fragment: str) -> None:
    verdict = parse_ranking(text)
    assert verdict.winner is None
    assert fragment in (verdict.error or "")


def test_outcome_maps_the_verdict_through_the_recorded_position() -> None:
    assert outcome_for_optimized("A", "A") == "win"
    assert outcome_for_optimized("A", "B") == "lose"
    assert outcome_for_optimized("B", "B") == "win"
    assert outcome_for_optimized("B", "A") == "lose"
    assert outcome_for_optimized("tie", "A") == "tie"
    assert outcome_for_optimized(None, "B") == "invalid"


def test_both_orders_count_only_agreement() -> None:
    assert combine_orders("win", "win") == "win"
    assert combine_orders("lose", "lose") == "lose"
    assert combine_orders("tie", "tie") == "tie"
    assert combine_orders("win", "lose") == "inconsistent"
    assert combine_orders("win", "tie") == "inconsistent"
    assert combine_orders("invalid", "win") == "invalid"


def test_order_draw_is_seeded_balanced_and_recomputable() -> None:
    draws = [optimized_position(42, "dolly", str(i), 1) for i in range(1000)]
    assert draws == [optimized_position(42, "dolly", str(i), 1) for i in range(1000)]
    assert 450 <= draws.count("A") <= 550
    other_seed = [optimized_position(7, "dolly", str(i), 1) for i in range(1000)]
    assert other_seed != draws
    other_round = [optimized_position(42, "dolly", str(i), 2) for i in range(1000)]
    assert other_round != draws
