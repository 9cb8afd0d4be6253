"""The paper's three test sets load from the real files; configs and files fail with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.evaluate.config import EvalConfig
from bpo_trainer.evaluate.pipeline import load_eval_prompts
from bpo_trainer.evaluate.testsets import load_testset, sample_prompts

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "bpo"


def test_vicuna_uses_text_and_question_id(data_dir: Path) -> None:
    prompts = load_testset("vicuna", data_dir=data_dir)
    assert len(prompts) == 80
    first = prompts[0]
    assert (first.testset, first.id, first.category) == ("vicuna", "1", "generic")
    assert first.prompt == "How can I improve my time management skills?"
    assert len({p.category for p in prompts}) == 9


def test_dolly_joins_instruction_and_context_like_the_reference(data_dir: Path) -> None:
    raw = json.loads((data_dir / "dolly_eval.json").read_text())
    prompts = load_testset("dolly", data_dir=data_dir)
    assert len(prompts) == 200
    for record, prompt in zip(raw, prompts, strict=True):
        # thu-coai/BPO gpt4_score.py: (i['instruction'] + '\n' + i['context']).strip()
        assert prompt.prompt == (record["instruction"] + "\n" + record["context"]).strip()
        assert prompt.id == str(record["idx"])
        assert prompt.category == record["category"]
    with_context = [p for p in prompts if p.context]
    assert len(with_context) == 63
    assert with_context[0].prompt.startswith(with_context[0].instruction + "\n")


def test_self_instruct_keys_on_id(data_dir: Path) -> None:
    prompts = load_testset("self_instruct", data_dir=data_dir)
    assert len(prompts) == 252
    assert prompts[0].id == "user_oriented_task_0"
    assert len({p.id for p in prompts}) == 252


def test_sample_is_seeded_ordered_and_per_testset(data_dir: Path) -> None:
    dolly = load_testset("dolly", data_dir=data_dir)
    first = sample_prompts(dolly, 20, seed=1)
    assert first == sample_prompts(dolly, 20, seed=1)
    assert first != sample_prompts(dolly, 20, seed=2)
    assert len(first) == 20
    positions = [dolly.index(p) for p in first]
    assert positions == sorted(positions)
    assert sample_prompts(dolly, 500, seed=1) == dolly
    config = EvalConfig(
        testsets=["vicuna", "dolly"], data_dir=str(data_dir), sample_size=5, optimizer="none"
    )
    loaded = load_eval_prompts(config)
    assert [p.testset for p in loaded] == ["vicuna"] * 5 + ["dolly"] * 5


def test_a_jsonl_file_of_prompts(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        {"prompt": "Write a haiku", "category": "poetry"},
        {"id": "x7", "instruction": "Summarize", "context": "Long text."},
        {"text": "Plain text prompt"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    prompts = load_testset(str(path))
    assert [p.id for p in prompts] == ["0", "x7", "2"]
    assert [p.prompt for p in prompts] == [
        "Write a haiku",
        "Summarize\nLong text.",
        "Plain text prompt",
    ]
    assert prompts[0].category == "poetry" and prompts[1].category is None
    assert {p.testset for p in prompts} == {"mine"}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"question": "no prompt field"}], "has no 'prompt', 'text' or 'instruction' field"),
        ([{"prompt": "  "}], "the prompt is empty"),
        ([{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}], "duplicate id '1'"),
    ],
)
def test_bad_prompt_files_name_the_record(
    tmp_path: Path, records: list[dict[str, object]], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(TrainerConfigError, match=message):
        load_testset(str(path))


def test_unknown_testset_and_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(TrainerConfigError, match="neither a built-in"):
        load_testset("mt_bench")
    with pytest.raises(TrainerConfigError, match=r"set data_dir .* or BPO_SHARED_DIR"):
        load_testset("vicuna", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "file"}, "needs optimized_file"),
        ({"optimizer": "tgi"}, "needs optimizer_url"),
        ({"optimizer": "gpt"}, "optimizer='gpt' is not supported"),
        ({"judge_prompt": "pair-v1"}, "choose one of 'pair-v2', 'alpaca-ranking'"),
        ({"answer_backend": "tgi"}, "answer_backend='tgi' needs answer_url"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"sample_size": -3}, "sample_size must be a positive integer"),
        ({"testsets": []}, "testsets is empty"),
        ({"answer_top_p": 1.5}, "answer_top_p must be in"),
        ({"requests_per_second": 0}, "requests_per_second must be > 0"),
    ],
)
def test_config_errors_name_the_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TrainerConfigError, match=message):
        EvalConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_references() -> None:
    config = EvalConfig()
    assert (config.answer_temperature, config.answer_top_p, config.answer_max_tokens) == (
        0.7,
        1.0,
        2048,
    )
    assert (config.judge_prompt, config.judge_temperature, config.judge_model) == (
        "pair-v2",
        0.0,
        "gpt-4",
    )
    assert config.both_orders is False


def test_the_openai_key_goes_only_to_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.delenv("ANSWER_API_KEY", raising=False)
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    config = EvalConfig(answer_url="http://localhost:8000/v1")
    assert config.api_key("answer") == "EMPTY"  # a local server never sees the OpenAI key
    assert config.api_key("judge") == "sk-openai"  # no judge_url: OpenAI's API
    monkeypatch.setenv("ANSWER_API_KEY", "vllm-key")
    assert config.api_key("answer") == "vllm-key"
