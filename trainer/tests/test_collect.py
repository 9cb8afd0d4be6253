"""Stage ``collect`` on small local files in each source's real format, read through ``datasets``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from bpo_trainer.collect import CollectConfig, DiversityFilter, distinct_n, run_collect
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.feedback import (
    ALPACA_GPT4,
    CHATBOT_ARENA,
    HH_RLHF,
    OASST1,
    canonical_source,
    load_rows,
    map_alpaca_gpt4,
    parse_hh_transcript,
    split_alpaca_prompt,
)
from bpo_trainer.records import read_records
from rich.console import Console

datasets = pytest.importorskip("datasets")

# -- source files in their published formats ------------------------------------------------------


def _oasst_message(
    message_id: str,
    parent_id: str | None,
    role: str,
    text: str,
    *,
    rank: int | None = None,
    lang: str = "en",
    tree: str = "t1",
    deleted: bool = False,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "parent_id": parent_id,
        "user_id": f"user-{message_id}",
        "created_date": "2023-02-05T14:23:50.983374+00:00",
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": True,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": None,
        "message_tree_id": tree,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [2]},
        "labels": {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]},
    }


OASST_ROWS = [
    _oasst_message("p1", None, "prompter", "What are the health benefits of green tea?"),
    _oasst_message("a1", "p1", "assistant", "Green tea has antioxidants (catechins)...", rank=0),
    _oasst_message("a2", "p1", "assistant", "It is a drink.", rank=2),
    _oasst_message("a3", "p1", "assistant", "Green tea may support heart health.", rank=1),
    # a follow-up question: its ranked replies form a multi-turn conversation
    _oasst_message("p2", "a1", "prompter", "Can you cite studies for each benefit?"),
    _oasst_message("a4", "p2", "assistant", "Yes: a 2006 JAMA cohort study found...", rank=0),
    _oasst_message("a5", "p2", "assistant", "No.", rank=1),
    # Spanish tree
    _oasst_message("p3", None, "prompter", "¿Qué es la fotosíntesis?", lang="es", tree="t2"),
    _oasst_message("a6", "p3", "assistant", "Es el proceso...", rank=0, lang="es", tree="t2"),
    _oasst_message("a7", "p3", "assistant", "No sé.", rank=1, lang="es", tree="t2"),
    # one reply without a rank
    _oasst_message("p4", None, "prompter", "Write a haiku about autumn leaves.", tree="t3"),
    _oasst_message("a8", "p4", "assistant", "Red leaves drift and fall", tree="t3"),
    # the worse reply was deleted: nothing left to compare
    _oasst_message("p5", None, "prompter", "Explain recursion to a child.", tree="t4"),
    _oasst_message("a9", "p5", "assistant", "Imagine two mirrors facing...", rank=0, tree="t4"),
    _oasst_message(
        "b1", "p5", "assistant", "Recursion is recursion.", rank=1, tree="t4", deleted=True
    ),
    # a rank of NaN (a float column's missing value) counts as unranked
    _oasst_message("p7", None, "prompter", "Suggest a name for a bakery.", tree="t6"),
    _oasst_message("c1", "p7", "assistant", "Rise & Shine Bakery", rank=0, tree="t6"),
    _oasst_message("c2", "p7", "assistant", "Bakery", rank=float("nan"), tree="t6"),
    # too short an instruction
    _oasst_message("p6", None, "prompter", "hi", tree="t5"),
    _oasst_message("b2", "p6", "assistant", "Hello! How can I help you today?", rank=0, tree="t5"),
    _oasst_message("b3", "p6", "assistant", "hi", rank=1, tree="t5"),
]


def _hh(human: str, chosen: str, rejected: str) -> dict[str, str]:
    return {
        "chosen": f"\n\nHuman: {human}\n\nAssistant: {chosen}",
        "rejected": f"\n\nHuman: {human}\n\nAssistant: {rejected}",
    }


HH_ROWS = [
    _hh(
        "How do I bake sourdough bread at home?",
        "Start with an active starter, mix flour, water and salt, then proof overnight.",
        "Buy bread at the store.",
    ),
    {
        "chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Maybe Luna?\n\n"
        "Human: Something more unusual?\n\nAssistant: How about Pixel or Nebula?",
        "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Maybe Luna?\n\n"
        "Human: Something more unusual?\n\nAssistant: Cat.",
    },
    _hh(
        "Tell me a fun fact about octopuses.", "They have three hearts.", "They have three hearts."
    ),
    {
        "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
        "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant:",
    },
    # the same instruction again (spacing and case differ): a duplicate
    _hh(
        "how do I bake  sourdough bread at home?",
        "Feed your starter first.",
        "Use a bread machine.",
    ),
]


def _arena(
    qid: str,
    question: str,
    answer_a: str,
    answer_b: str,
    winner: str,
    *,
    turn: int = 1,
    language: str = "English",
    extra_turn: bool = False,
) -> dict[str, Any]:
    def conv(answer: str) -> list[dict[str, str]]:
        messages = [{"content": question, "role": "user"}, {"content": answer, "role": "assistant"}]
        if extra_turn:
            messages += [
                {"content": "And then?", "role": "user"},
                {"content": "Then it ends.", "role": "assistant"},
            ]
        return messages

    return {
        "question_id": qid,
        "model_a": "vicuna-13b",
        "model_b": "koala-13b",
        "winner": winner,
        "judge": "arena_user_973",
        "conversation_a": conv(answer_a),
        "conversation_b": conv(answer_b),
        "turn": turn,
        "anony": True,
        "language": language,
        "tstamp": 1682351591.1322,
        "openai_moderation": {"flagged": False},
        "toxic_chat_tag": {"roberta-large": {"flagged": False, "probability": 0.008}},
    }


ARENA_ROWS = [
    _arena(
        "q1", "Explain quantum entanglement simply.", "It is spooky.", "Two particles...", "model_b"
    ),
    _arena("q2", "Write a limerick about a cat.", "There once was a cat...", "Cats.", "model_a"),
    _arena("q3", "What is 2+2 in binary?", "100", "100", "tie"),
    _arena("q4", "Name three primary colors.", "Red, blue, yellow.", "Green.", "tie (bothbad)"),
    _arena(
        "q5",
        "Tell me a story about a dragon.",
        "Once...",
        "A dragon.",
        "model_a",
        turn=2,
        extra_turn=True,
    ),
    _arena("q6", "¿Cuál es la capital de Perú?", "Lima.", "Cusco.", "model_a", language="Spanish"),
]

ALPACA_FACTORY_ROWS = [
    {
        "instruction": "Classify the following animal as a mammal or a reptile.",
        "input": "Crocodile",
        "output": ["A crocodile is a reptile.", "Mammal."],
    },
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": ["1. Eat a balanced diet...", "Sleep."],
    },
]

_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
)


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def source_files(tmp_path: Path) -> dict[str, Path]:
    alpaca = tmp_path / "comparison_gpt4_data_en.json"
    alpaca.write_text(json.dumps(ALPACA_FACTORY_ROWS, indent=2), encoding="utf-8")
    return {
        OASST1: _write_parquet(OASST_ROWS, tmp_path / "oasst1-train.parquet"),
        HH_RLHF: _write_jsonl(HH_ROWS, tmp_path / "hh-train.jsonl"),
        CHATBOT_ARENA: _write_parquet(ARENA_ROWS, tmp_path / "arena-train.parquet"),
        ALPACA_GPT4: alpaca,
    }


def _config(files: dict[str, Path], tmp_path: Path, **overrides: Any) -> CollectConfig:
    values: dict[str, Any] = {
        "output_file": str(tmp_path / "out" / "feedback.jsonl"),
        "oasst1_path": str(files[OASST1]),
        "hh_rlhf_path": str(files[HH_RLHF]),
        "chatbot_arena_path": str(files[CHATBOT_ARENA]),
        "alpaca_gpt4_path": str(files[ALPACA_GPT4]),
        "cache_dir": str(tmp_path / "hf-cache"),
    }
    values.update(overrides)
    return CollectConfig(**values)


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


# -- the whole stage ------------------------------------------------------------------------------


def test_collect_maps_each_source_and_drops_what_the_rules_say(
    source_files: dict[str, Path], tmp_path: Path
) -> None:
    console = _quiet()
    summary = run_collect(_config(source_files, tmp_path), console=console)
    records = read_records(summary["output_file"])
    by_instruction = {r["instruction"]: r for r in records}

    assert sorted(by_instruction) == sorted(
        [
            "What are the health benefits of green tea?",
            "How do I bake sourdough bread at home?",
            "Explain quantum entanglement simply.",
            "Write a limerick about a cat.",
            "Classify the following animal as a mammal or a reptile.",
            "Give three tips for staying healthy.",
        ]
    )
    tea = by_instruction["What are the health benefits of green tea?"]
    assert tea["good_res"] == "Green tea has antioxidants (catechins)..."
    assert tea["bad_res"] == "It is a drink."  # the worst rank, not the second
    assert tea["source"] == "oasst1" and "context" not in tea
    bread = by_instruction["How do I bake sourdough bread at home?"]
    assert (bread["good_res"], bread["bad_res"]) == (
        "Start with an active starter, mix flour, water and salt, then proof overnight.",
        "Buy bread at the store.",
    )
    quantum = by_instruction["Explain quantum entanglement simply."]
    assert (quantum["good_res"], quantum["bad_res"]) == ("Two particles...", "It is spooky.")
    assert (quantum["good_model"], quantum["bad_model"]) == ("koala-13b", "vicuna-13b")
    assert quantum["source"] == "Chatbot_Arena_Conversation"
    crocodile = by_instruction["Classify the following animal as a mammal or a reptile."]
    assert crocodile["context"] == "Crocodile" and crocodile["source"] == "alpaca-gpt4"
    assert by_instruction["Give three tips for staying healthy."]["context"] == ""
    assert len({r["id"] for r in records}) == len(records)

    stats = json.loads(Path(summary["stats_file"]).read_text())["sources"]
    assert stats["oasst1"]["dropped"] == {
        "language": 1,
        "multi_turn": 1,
        "too_short": 1,
        "unranked": 3,
    }
    assert stats["hh-rlhf"]["dropped"] == {
        "duplicate": 1,
        "empty_response": 1,
        "identical_responses": 1,
        "multi_turn": 1,
    }
    assert stats["Chatbot_Arena_Conversation"]["dropped"] == {
        "language": 1,
        "multi_turn": 1,
        "no_preference": 2,
    }
    assert stats["oasst1"]["rows"] == len(OASST_ROWS)
    assert stats["total"]["count"] == 6
    assert stats["alpaca-gpt4"]["with_context"] == 1
    assert stats["hh-rlhf"]["avg_instruction_words"] == 8.0
    assert stats["hh-rlhf"]["avg_good_res_words"] == 13.0
    assert stats["oasst1"]["distinct_1"] == 1.0
    table = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Collected feedback data" in table and "Chatbot_Arena_Conversation" in table


def test_sampling_is_deterministic_per_seed(source_files: dict[str, Path], tmp_path: Path) -> None:
    rows = [
        _hh(f"Question number {i}: how do {topic} work?", f"Detailed answer {i}.", "No.")
        for i, topic in enumerate(
            [
                "magnets",
                "vaccines",
                "rainbows",
                "tides",
                "volcanoes",
                "batteries",
                "clouds",
                "bridges",
                "engines",
                "compilers",
                "elevators",
                "satellites",
            ]
        )
    ]
    files = {**source_files, HH_RLHF: _write_jsonl(rows, tmp_path / "hh-many.jsonl")}

    def sample(seed: int, name: str) -> list[str]:
        config = _config(
            files,
            tmp_path,
            sources=["hh-rlhf"],
            num_samples=["hh-rlhf=5"],
            seed=seed,
            output_file=str(tmp_path / f"{name}.jsonl"),
        )
        return [r["id"] for r in read_records(run_collect(config, console=_quiet())["output_file"])]

    first, again, other = sample(7, "a"), sample(7, "b"), sample(8, "c")
    assert len(first) == 5
    assert first == again
    assert first != other
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_self_bleu_filter_drops_near_duplicates_and_keeps_real_instructions(
    bpo_val_records: list[dict[str, Any]],
) -> None:
    keep = DiversityFilter(threshold=60, references=64, seed=0)
    real = [r["instruction"] for r in bpo_val_records]
    kept = [text for text in real if keep(text)]
    # the 300 real BPO instructions are diverse: almost all pass
    assert len(kept) >= 0.97 * len(real)
    near_duplicates = [f"{text.rstrip('.?!')}, please." for text in kept[:50] if len(text) > 40]
    assert near_duplicates
    assert not any(keep(text) for text in near_duplicates)
    assert keep("Compose a sonnet about a lighthouse keeper who collects sea glass.")

    disabled = DiversityFilter(threshold=0, seed=0)
    assert disabled("Write a poem about the ocean.") and disabled("Write a poem about the ocean.")


def test_self_bleu_filter_in_the_stage(source_files: dict[str, Path], tmp_path: Path) -> None:
    rows = [
        _hh("Write a short poem about the ocean at night.", "Waves hum...", "Ocean."),
        _hh("Write a short poem about the ocean at night!", "Moonlit waves...", "Sea."),
        _hh("Summarize the causes of the French Revolution.", "Debt, famine...", "Kings."),
    ]
    files = {**source_files, HH_RLHF: _write_jsonl(rows, tmp_path / "hh-similar.jsonl")}
    config = _config(files, tmp_path, sources=["hh-rlhf"])
    summary = run_collect(config, console=_quiet())
    assert summary["records"] == 2
    assert summary["stats"]["hh-rlhf"]["dropped"] == {"similar": 1}
    off = _config(
        files,
        tmp_path,
        sources=["hh-rlhf"],
        self_bleu_threshold=0,
        output_file=str(tmp_path / "off.jsonl"),
    )
    assert run_collect(off, console=_quiet())["records"] == 3


# -- each source's formats ------------------------------------------------------------------------


def test_alpaca_gpt4_comparison_formats_of_gpt4_llm(tmp_path: Path) -> None:
    v2 = [
        {
            "user_input": _PREAMBLE_INPUT + "Translate the sentence into French.\n\n### Input:\n"
            "The cat sleeps.",
            "responses_and_scores": [
                {"response": "Le chat dort.", "score": 10.0, "source": "gpt4"},
                {"response": "The cat sleeps.", "score": 2.0, "source": "icm-1.3b"},
                {"response": "Le chat dors.", "score": 7.0, "source": "text-davinci-003"},
            ],
        },
        {
            "user_input": _PREAMBLE + "Name a planet.",
            "responses_and_scores": [
                {"response": "Mars.", "score": 8.0, "source": "gpt4"},
                {"response": "Mars is a planet.", "score": 8.0, "source": "text-davinci-003"},
            ],
        },
    ]
    path = tmp_path / "comparison_data_v2.json"
    path.write_text(json.dumps(v2), encoding="utf-8")
    dataset = load_rows(str(path), source=ALPACA_GPT4, cache_dir=str(tmp_path / "cache"))
    outcomes = list(map_alpaca_gpt4(dataset))
    record = outcomes[0]
    assert not isinstance(record, str)
    assert (record.instruction, record.context) == (
        "Translate the sentence into French.",
        "The cat sleeps.",
    )
    assert (record.good_res, record.bad_res) == ("Le chat dort.", "The cat sleeps.")
    assert outcomes[1] == "no_preference"

    v1 = [
        {"user_input": _PREAMBLE + "Name a planet.", "completion_a": "Mars.", "completion_b": "?"}
    ]
    (only,) = map_alpaca_gpt4(v1)
    assert not isinstance(only, str)
    assert (only.instruction, only.context, only.good_res) == ("Name a planet.", "", "Mars.")


def test_parsers() -> None:
    assert parse_hh_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:") == [
        ("Human", "hi"),
        ("Assistant", "hello"),
        ("Human", "bye"),
        ("Assistant", ""),
    ]
    assert parse_hh_transcript("Human: no leading blank line") is None
    assert split_alpaca_prompt(_PREAMBLE_INPUT + "Sort these.\n\n### Input:\n3, 1, 2") == (
        "Sort these.",
        "3, 1, 2",
    )
    assert canonical_source("Chatbot-Arena") == CHATBOT_ARENA
    assert canonical_source("HH_RLHF") == HH_RLHF
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == 2 / 3


# -- bad input ------------------------------------------------------------------------------------


def test_hub_ids_are_the_defaults_and_offline_gives_a_clear_error(tmp_path: Path) -> None:
    config = CollectConfig(sources=["oasst1"], output_file=str(tmp_path / "x.jsonl"))
    assert config.oasst1_path == "OpenAssistant/oasst1"
    assert CollectConfig().hh_rlhf_path == "Anthropic/hh-rlhf"
    assert CollectConfig().chatbot_arena_path == "lmsys/chatbot_arena_conversations"
    with pytest.raises(TrainerConfigError) as raised:
        run_collect(config, console=_quiet())
    message = str(raised.value)
    assert "OpenAssistant/oasst1" in message and "--oasst1_path" in message
    assert "HF_HUB_OFFLINE" in message


def test_wrong_format_and_bad_options_name_the_fix(
    source_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TrainerConfigError, match=r"lacks the column\(s\) chosen, rejected"):
        run_collect(
            _config(
                source_files, tmp_path, sources=["hh-rlhf"], hh_rlhf_path=str(source_files[OASST1])
            ),
            console=_quiet(),
        )
    with pytest.raises(TrainerConfigError, match="expected one of the comparison formats"):
        run_collect(
            _config(
                source_files,
                tmp_path,
                sources=["alpaca"],
                alpaca_gpt4_path=str(source_files[HH_RLHF]),
            ),
            console=_quiet(),
        )
    with pytest.raises(TrainerConfigError, match="neither an existing file nor a hub dataset id"):
        load_rows(str(tmp_path / "missing.jsonl"), source=HH_RLHF)
    with pytest.raises(TrainerConfigError, match="SOURCE=N"):
        CollectConfig(num_samples=["oasst1:3000"])
    with pytest.raises(TrainerConfigError, match="unknown source 'reddit'"):
        CollectConfig(sources=["reddit"])


def test_config_parses_from_the_command_line() -> None:
    transformers = pytest.importorskip("transformers")
    (config,) = transformers.HfArgumentParser(CollectConfig).parse_args_into_dataclasses(
        [
            "--sources",
            "oasst1",
            "arena",
            "--num_samples",
            "oasst1=3000",
            "--seed",
            "3",
            "--self_bleu_threshold",
            "0",
        ]
    )
    assert config.sources == [OASST1, CHATBOT_ARENA]
    assert config.sample_sizes() == {OASST1: 3000}
    assert (config.seed, config.self_bleu_threshold, config.stats_file) == (3, 0.0, None)
