"""``bpo-train drpo`` end to end against real HTTP servers on 127.0.0.1 (and a tiny local model).

The base model, the optimizer and the judge are ``ScriptedServer``s behind the OpenAI client,
scripted so that the search has one right answer:

- the optimizer appends `` +`` or `` ++`` to an example's response (its 1st/2nd call for the same
  prompt), and proposes the current system prompt plus "Answer STEP BY STEP." or "Be brief.";
- the base model writes one "detailed" per "STEP BY STEP" in its system prompt, and a garbled
  answer under "Be brief.";
- the judge scores ``1 + (number of "+") + 2 * (number of "detailed")``, at most 5; it answers
  prose instead of JSON for garbled outputs and for the Hamlet query's aspect selection, and
  the first time it scores a "detailed detailed" answer.

Budget: beam 2, depth 2, 4 seed queries (real BPO prompts from ../shared), 3 examples.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from bpo_trainer.cli import main
from bpo_trainer.drpo import DRPOConfig, run_drpo
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.evaluate import LocalChat, OpenAIChat

from bpo_integrations.drpo import ARTIFACT_SCHEMA, load_artifact
from bpo_integrations.jsonl import read_jsonl
from bpo_integrations.testing.servers import ScriptedServer

pytestmark = pytest.mark.shared_data

INITIAL = "You are a helpful assistant."
STEP = " Answer STEP BY STEP."
BRIEF = " Be brief."
EXAMPLES = [
    {"query": "How do I keep basil alive indoors?", "response": "Water it."},
    {"query": "What causes ocean tides?", "response": "The moon."},
    {"query": "Summarize the plot of Hamlet.", "response": "GARBLE Prince, revenge."},
]
# Calls of one uninterrupted search (derived in the module docstring's terms):
# ICL: 2 clean examples x (1 selection + 1 + 2 + 4 scores, 2 + 4 revisions) + Hamlet (1 + 2).
# Prompt: root, step 1 (2 proposals), step 2 (2 proposals, 1 kept), step 3 (both kept; the
# depth grew by one because a prompt was kept).
EXPECTED_CALLS = {"base": 8, "optimizer": 16, "judge": 37}


class Optimizer:
    """Scripted optimizer LLM; thread-safe (the server answers in threads)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, prompt: str) -> str:
        with self.lock:
            nth = self.seen[prompt]
            self.seen[prompt] += 1
        if "## Current response\n" in prompt:
            response = prompt.split("## Current response\n", 1)[1].split("\n\n## The critic", 1)[0]
            new = response + (" +" if nth % 2 == 0 else " ++")
            reply = {"analysis": "more", "thought": "add", "new_response": f"<START>\n{new}\n<END>"}
            return json.dumps(reply)
        current = prompt.split("## Current system prompt\n", 1)[1].split("\n\n## A query", 1)[0]
        new = current + (STEP if nth % 2 == 0 else BRIEF)
        return "My proposal:\n```json\n" + json.dumps({"new_system_prompt": new}) + "\n```"


class Judge:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.fail_at: int | None = None
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        with self.lock:
            self.calls += 1
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise RuntimeError("the judge crashed")
            first_time = prompt not in self.seen
            self.seen.add(prompt)
        if "## Aspect Selection" in prompt:
            if "Hamlet" in prompt.split("## Query\n", 1)[1]:
                return "Helpfulness and depth matter most here."
            selection = {
                "reasoning": "what matters",
                "selected_aspects": ["helpfulness", "Depth", "critical thinking"],
            }
            return json.dumps({"query_analysis": {}, "aspects_selection": selection})
        output = prompt.split("## Output\n", 1)[1].split("\n\n## Aspects\n", 1)[0]
        if "GARBLE" in output or ("detailed detailed" in output and first_time):
            return "A solid answer; I would give it a four."
        listed = prompt.split("## Aspects\n", 1)[1].split("\n\nThese aspects", 1)[0]
        aspects = re.findall(r"^- ([\w-]+): ", listed, re.M)
        score = min(5, 1 + output.count("+") + 2 * output.count("detailed"))
        return json.dumps(
            {a: {"rationale": "could be better", "score": f"{score}/5"} for a in aspects}
        )


def base_model(messages: list[dict[str, Any]]) -> str:
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    garbled = "GARBLE " if "Be brief" in system else ""
    examples = sum(1 for m in messages if m["role"] == "assistant")
    return "detailed " * system.count("STEP BY STEP") + garbled + f"answer with {examples} examples"


@pytest.fixture
def servers() -> Iterator[dict[str, ScriptedServer]]:
    with (
        ScriptedServer(chat_responder=base_model) as base,
        ScriptedServer(Optimizer()) as optimizer,
        ScriptedServer(Judge()) as judge,
    ):
        yield {"base": base, "optimizer": optimizer, "judge": judge}


@pytest.fixture
def examples_file(tmp_path: Path) -> Path:
    path = tmp_path / "icl.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES), encoding="utf-8")
    return path


def make_config(
    out: Path, shared_dir: Path, examples_file: Path, servers: dict[str, ScriptedServer], **kw: Any
) -> DRPOConfig:
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "queries_file": str(shared_dir / "data" / "bpo" / "val.json"),
        "num_queries": 4,
        "examples_file": str(examples_file),
        "icl_beam_width": 2,
        "icl_depth": 2,
        "icl_candidates": 2,
        "prompt_beam_width": 2,
        "prompt_depth": 2,
        "prompt_candidates": 2,
        "prompt_max_depth_increase": 1,
        "k": 2,
        "progress": False,
        "retry_max_wait": 0.01,
        "concurrency": 1,
    }
    for role, server in servers.items():
        settings[f"{role}_url"] = server.url + "/v1"
        settings[f"{role}_model"] = "scripted-bpo"
    settings.update(kw)
    return DRPOConfig(**settings)


def chat_requests(server: ScriptedServer) -> list[dict[str, Any]]:
    return [body for path, body in server.requests if path == "/v1/chat/completions"]


def counts(servers: dict[str, ScriptedServer]) -> dict[str, int]:
    return {role: len(chat_requests(server)) for role, server in servers.items()}


def test_search_finds_the_prompt_the_judge_rewards_and_writes_a_valid_artifact(
    tmp_path: Path, shared_dir: Path, examples_file: Path, servers: dict[str, ScriptedServer]
) -> None:
    config = make_config(tmp_path / "run", shared_dir, examples_file, servers)
    result = run_drpo(config)

    assert counts(servers) == EXPECTED_CALLS
    data = json.loads(result.artifact_path.read_text())
    jsonschema.validate(data, ARTIFACT_SCHEMA)
    artifact = load_artifact(result.artifact_path)
    assert data["format"] == "drpo-alignment/1" and artifact.k == 2

    # Step 2: two "STEP BY STEP" make the judge give 5s; "Be brief" garbles the answers.
    assert artifact.system_prompt == INITIAL + STEP + STEP
    prompt_scores = data["scores"]["system_prompt"]
    assert prompt_scores["best_rewards"] == [3.0, 5.0, 5.0]
    assert prompt_scores["best_aggregate"] == pytest.approx(13 / 3)
    assert prompt_scores["initial_reward"] == 1.0
    assert [s["step"] for s in prompt_scores["steps"]] == [0, 1, 2, 3]

    # Step 1: the beam kept the best revision; the Hamlet example, whose score is unreadable,
    # stays as it was, unscored.
    basil, tides, hamlet = artifact.examples
    assert basil.response == "Water it. ++ ++" and basil.score == 5.0
    assert tides.response == "The moon. ++ ++" and tides.score == 5.0
    assert hamlet.response == EXAMPLES[2]["response"] and hamlet.score is None
    assert basil.aspects == ("Helpfulness", "Depth", "Critical-Thinking")
    assert hamlet.aspects == ("Helpfulness", "Clarity", "Factuality", "Depth", "Engagement")
    assert data["scores"]["icl"][0]["best_per_depth"] == [1.0, 3.0, 5.0]
    assert data["examples"][0]["original_response"] == "Water it."

    # The base model got the candidate system prompt and k=2 optimized examples as turns.
    for body in chat_requests(servers["base"]):
        messages = body["messages"]
        assert messages[0]["role"] == "system" and messages[0]["content"].startswith(INITIAL)
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 2 + ["user"]
        shown = {m["content"] for m in messages[2:-1:2]}
        assert shown <= {e.response for e in artifact.examples}
    assert any(
        "++ ++" in m["content"] for b in chat_requests(servers["base"]) for m in b["messages"]
    )

    # Malformed answers are counted, not fatal: Hamlet's aspect selection, five judgments of
    # garbled outputs (asked twice each), two "detailed detailed" judgments read on the 2nd try.
    stats = data["stats"]["malformed"]
    assert stats == {
        "aspect_selections": 1,
        "judgments": 5,
        "judge_reasks": 7,
        "judgments_missing_aspects": 0,
        "revisions": 0,
        "proposals": 0,
    }
    assert result.malformed == stats
    assert data["stats"]["calls"]["new_calls"] == EXPECTED_CALLS
    assert data["models"]["judge"] == ["openai", servers["judge"].url + "/v1", "scripted-bpo"]

    log = result.log_path.read_text()
    assert "## Step 1: in-context examples" in log and "## Step 2: system prompt" in log
    assert "**malformed judgment** after 2 tries" in log
    assert log.count("### Step ") == 4 and "Answer STEP BY STEP. Answer STEP BY STEP." in log


def test_restart_after_a_crash_repeats_no_finished_step_or_call(
    tmp_path: Path, shared_dir: Path, examples_file: Path, servers: dict[str, ScriptedServer]
) -> None:
    out = tmp_path / "resumed"
    config = make_config(out, shared_dir, examples_file, servers, max_retries=0)
    judge: Judge = servers["judge"].responder  # type: ignore[assignment]
    judge.fail_at = 26  # in step 2, after step 1 finished
    with pytest.raises(StageFailedError, match="judge model failed"):
        run_drpo(config)
    first = counts(servers)
    finished = Counter(r["role"] for r in read_jsonl(out / "calls.jsonl"))
    steps_before = {r["key"] for r in read_jsonl(out / "steps.jsonl")}
    assert 0 < finished["judge"] < EXPECTED_CALLS["judge"]
    assert not (out / "alignment.json").exists()

    judge.fail_at = None
    result = run_drpo(config)
    second = {role: counts(servers)[role] - first[role] for role in servers}
    # Exactly the calls that had not finished were sent again (the one that crashed included).
    assert second == {role: EXPECTED_CALLS[role] - finished[role] for role in servers}
    assert result.new_calls == second
    steps_after = [r["key"] for r in read_jsonl(out / "steps.jsonl")]
    assert len(steps_after) == len(set(steps_after))  # no step written twice
    assert result.steps_reused == len(steps_before) >= 7  # every ICL step, and step 0
    assert load_artifact(result.artifact_path).system_prompt == INITIAL + STEP + STEP

    # A third run is a replay: no request, the same artifact.
    before = counts(servers)
    again = run_drpo(config)
    assert counts(servers) == before and sum(again.new_calls.values()) == 0
    assert again.artifact.system_prompt == result.artifact.system_prompt
    assert again.artifact.examples == result.artifact.examples


def test_cli_runs_the_search_from_a_yaml_config(
    tmp_path: Path,
    shared_dir: Path,
    examples_file: Path,
    servers: dict[str, ScriptedServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(
        tmp_path / "cli", shared_dir, examples_file, servers, icl_depth=1, prompt_depth=1
    )
    lines = [
        f"{key}: {json.dumps(getattr(config, key))}"
        for key in (
            "output_dir",
            "queries_file",
            "examples_file",
            "base_url",
            "optimizer_url",
            "judge_url",
            "base_model",
            "optimizer_model",
            "judge_model",
        )
    ]
    yaml_file = tmp_path / "drpo.yaml"
    yaml_file.write_text("\n".join(lines) + "\n")
    argv = [
        "drpo",
        "--config",
        str(yaml_file),
        "--num_queries",
        "3",
        "--prompt_depth",
        "1",
        "--icl_depth",
        "1",
        "--progress",
        "false",
        "--k",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "alignment.json" in printed and "search_log.md" in printed
    artifact = load_artifact(tmp_path / "cli" / "alignment.json")
    assert artifact.k == 1 and artifact.system_prompt.startswith(INITIAL)
    assert artifact.settings["num_queries"] == 3


def test_bad_inputs_name_the_fix(tmp_path: Path, servers: dict[str, ScriptedServer]) -> None:
    assert main(["drpo", "--progress", "false"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no known field"}) + "\n")
    with pytest.raises(TrainerConfigError, match="has no query: give one of query, prompt"):
        run_drpo(DRPOConfig(queries_file=str(bad), output_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="prompt_beam_width must be a positive integer"):
        DRPOConfig(prompt_beam_width=0)
    with pytest.raises(ValueError, match="base_backend='tgi' needs base_url"):
        DRPOConfig(base_backend="tgi")


def test_a_tiny_local_llama_can_be_the_base_model(
    tmp_path: Path,
    shared_dir: Path,
    examples_file: Path,
    servers: dict[str, ScriptedServer],
    tiny_llama_dir: Path,
) -> None:
    config = make_config(
        tmp_path / "local",
        shared_dir,
        examples_file,
        servers,
        base_backend="local",
        base_model=str(tiny_llama_dir),
        base_max_tokens=8,
        icl_depth=0,
        prompt_depth=1,
        num_queries=2,
    )
    result = run_drpo(
        config, optimizer_model=OpenAIChat(servers["optimizer"].url + "/v1", "scripted-bpo")
    )
    assert not chat_requests(servers["base"])
    base_calls = [r for r in read_jsonl(result.output_dir / "calls.jsonl") if r["role"] == "base"]
    assert len(base_calls) == 3  # the initial prompt, then two proposals on the 2nd query
    assert all(r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 8 for r in base_calls)
    assert result.artifact.models["base"] == ["local", str(tiny_llama_dir)]
    assert isinstance(LocalChat(str(tiny_llama_dir)).identity(), tuple)
