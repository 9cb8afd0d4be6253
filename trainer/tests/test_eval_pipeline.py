"""``bpo-train eval`` end to end against real HTTP servers on 127.0.0.1 (and a tiny local model).

The answering model and the judge are ``ScriptedServer``s speaking OpenAI's and TGI's chat APIs;
the optimizer is a ``BPOOptimizer`` (a ``CallableBackend``, or ``TGIBackend`` on a server). The
scripted answering model writes a "DETAILED" answer only when the prompt asks for detail, so a
judge that reads the answers knows which one came from the optimized prompt.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpo_trainer.cli import main
from bpo_trainer.errors import StageFailedError
from bpo_trainer.evaluate import EvalConfig, arun_eval, run_eval
from bpo_trainer.evaluate.pipeline import optimized_position

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.jsonl import read_jsonl
from bpo_integrations.testing.servers import Fault, ScriptedServer, hf_inference_online

pytestmark = pytest.mark.shared_data

SUFFIX = " Answer in detail."
_A = re.compile(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's", re.S)
_B = re.compile(r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's", re.S)
_QUESTION = re.compile(r"^\[User Question\]\n(.*?)\n\n\[The Start of Assistant A", re.S)


def answering_model(prompt: str) -> str:
    level = prompt.count(SUFFIX.strip())
    head = prompt.splitlines()[0][:30]
    return f"DETAILED x{level}: {head}" if level else f"brief: {head}"


def answers_of(judge_text: str) -> tuple[str, str]:
    a, b = _A.search(judge_text), _B.search(judge_text)
    assert a is not None and b is not None, judge_text[:300]
    return a.group(1), b.group(1)


def always_a(judge_text: str) -> str:
    return "Assistant A is better.\n\n[[A]]"


def prefers_detailed(judge_text: str) -> str:
    a, b = answers_of(judge_text)
    if a.startswith("DETAILED") == b.startswith("DETAILED"):
        return "Equal.\n\n[[C]]"
    return "A is more detailed.\n\n[[A]]" if a.startswith("DETAILED") else "B wins.\n\n[[B]]"


def detail_optimizer() -> BPOOptimizer:
    return BPOOptimizer(CallableBackend(lambda prompt: prompt + SUFFIX), timeout=10)


@pytest.fixture
def answer_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(answering_model) as server:
        yield server


@pytest.fixture
def judge_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(always_a) as server:
        yield server


def make_config(
    tmp_path: Path,
    shared_dir: Path,
    answer: ScriptedServer,
    judge: ScriptedServer,
    **overrides: Any,
) -> EvalConfig:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "testsets": ["vicuna"],
        "data_dir": str(shared_dir / "data" / "bpo"),
        "optimizer_model": "detail-suffix",
        "answer_url": answer.url + "/v1",
        "answer_model": "scripted-bpo",
        "judge_url": judge.url + "/v1",
        "judge_model": "scripted-bpo",
        "progress": False,
        "bootstrap_samples": 200,
        "retry_max_wait": 0.05,
        "concurrency": 16,
    }
    settings.update(overrides)
    return EvalConfig(**settings)


def judgments(config: EvalConfig) -> list[dict[str, Any]]:
    return list(read_jsonl(Path(config.output_dir) / "judgments.jsonl"))


def result_row(summary: dict[str, Any], testset: str, round_index: int = 1) -> dict[str, Any]:
    return next(
        r for r in summary["results"] if r["testset"] == testset and r["round"] == round_index
    )


def judge_requests(server: ScriptedServer) -> list[str]:
    return [
        body["messages"][-1]["content"]
        for path, body in server.requests
        if path == "/v1/chat/completions"
    ]


def test_always_a_judge_wins_exactly_the_pairs_drawn_optimized_first(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    config = make_config(tmp_path, shared_dir, answer_server, judge_server, testsets=["dolly"])
    result = run_eval(config, optimizer=detail_optimizer())

    records = judgments(config)
    assert len(records) == 200 and len(judge_requests(judge_server)) == 200
    assert len(answer_server.requests) == 400
    for record in records:
        assert record["optimized_position"] == optimized_position(42, "dolly", record["id"], 1)
    drawn_first = sum(r["optimized_position"] == "A" for r in records)
    row = result_row(result.summary, "dolly")
    assert (row["n"], row["win"], row["lose"], row["tie"]) == (
        200,
        drawn_first,
        200 - drawn_first,
        0,
    )
    assert 0.40 <= row["win_rate"] <= 0.60
    assert row["ci_low"] <= row["delta_wr"] <= row["ci_high"]

    # The judge really saw the optimized prompt's answer at the recorded position.
    questions = {q["id"]: q["text"] for q in _dolly_questions(shared_dir)}
    by_text = {questions[r["id"]]: r["optimized_position"] for r in records}
    for text in judge_requests(judge_server):
        question = _QUESTION.search(text)
        assert question is not None
        answer_a, answer_b = answers_of(text)
        expected = by_text[question.group(1)]
        assert answer_a.startswith("DETAILED") == (expected == "A")
        assert answer_b.startswith("DETAILED") == (expected == "B")


def _dolly_questions(shared_dir: Path) -> list[dict[str, str]]:
    raw = json.loads((shared_dir / "data" / "bpo" / "dolly_eval.json").read_text())
    return [
        {"id": str(r["idx"]), "text": (r["instruction"] + "\n" + r["context"]).strip()} for r in raw
    ]


def test_both_orders_always_a_counts_no_win(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    config = make_config(tmp_path, shared_dir, answer_server, judge_server, both_orders=True)
    result = run_eval(config, optimizer=detail_optimizer())

    assert len(judge_requests(judge_server)) == 160
    positions = [r["optimized_position"] for r in judgments(config)]
    assert positions.count("A") == positions.count("B") == 80
    row = result_row(result.summary, "vicuna")
    assert (row["n"], row["win"], row["lose"], row["inconsistent"]) == (80, 0, 0, 80)
    assert row["win_rate"] == 0.0 and row["tie_rate"] == 1.0 and row["delta_wr"] == 0.0
    assert "| vicuna | 80 | 0.0 | 100.0 | 0.0 | +0.0 |" in result.report_path.read_text()


@pytest.mark.parametrize("both_orders", [False, True])
def test_a_judge_that_reads_the_answers_finds_the_optimized_one(
    tmp_path: Path,
    shared_dir: Path,
    answer_server: ScriptedServer,
    judge_server: ScriptedServer,
    both_orders: bool,
) -> None:
    judge_server.responder = prefers_detailed
    config = make_config(
        tmp_path, shared_dir, answer_server, judge_server, sample_size=30, both_orders=both_orders
    )
    result = run_eval(config, optimizer=detail_optimizer())
    row = result_row(result.summary, "vicuna")
    assert (row["n"], row["win"], row["delta_wr"]) == (30, 30, 1.0)
    assert len(judge_requests(judge_server)) == (60 if both_orders else 30)


async def test_restart_midway_repeats_no_judged_pair(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    def bpo_model(raw_prompt: str) -> str:  # TGI /generate gets the raw BPO template
        return raw_prompt.split("response:\n", 1)[1].rsplit(" [/INST]", 1)[0] + SUFFIX

    def slow_judge(text: str) -> str:
        time.sleep(0.01)
        return prefers_detailed(text)

    judge_server.responder = slow_judge
    with ScriptedServer(bpo_model) as optimizer_server, hf_inference_online():
        config = make_config(
            tmp_path,
            shared_dir,
            answer_server,
            judge_server,
            optimizer="tgi",
            optimizer_url=optimizer_server.url,
            optimizer_model=None,
            concurrency=4,
        )
        path = Path(config.output_dir) / "judgments.jsonl"
        task = asyncio.create_task(arun_eval(config))
        while not path.exists() or path.read_text().count("\n") < 20:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        finished = path.read_text().count("\n")
        assert 20 <= finished < 80
        with path.open("a") as handle:  # a crash mid-write leaves a torn last line
            handle.write('{"key": "torn", "testset": "vic')
        judge_server.wait_disconnected()  # requests sent before the cancel are all counted
        before = len(judge_requests(judge_server))
        assert finished <= before <= finished + 4  # at most `concurrency` were in flight

        second = await arun_eval(config)
        assert second.new_calls == {"optimize": 0, "answer": 0, "judge": 80 - finished}
        assert len(judge_requests(judge_server)) - before == 80 - finished
        keys = [r["key"] for r in judgments(config)]
        assert len(keys) == len(set(keys)) == 80
        assert result_row(second.summary, "vicuna")["win"] == 80

        counts = (len(optimizer_server.requests), len(answer_server.requests), before)
        third = await arun_eval(config)
        assert third.new_calls == {"optimize": 0, "answer": 0, "judge": 0}
        assert len(optimizer_server.requests) == counts[0]
        assert len(answer_server.requests) == counts[1]
        assert len(judge_requests(judge_server)) == before + 80 - finished


def test_transient_errors_are_retried(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    judge_server.inject(
        Fault("status", status=429, retry_after=0),
        Fault("status", status=503),
        Fault("drop_connection"),
        Fault("malformed_json"),
    )
    answer_server.inject(Fault("status", status=502), Fault("drop_connection"))
    config = make_config(tmp_path, shared_dir, answer_server, judge_server, sample_size=10)
    result = run_eval(config, optimizer=detail_optimizer())
    assert result.failures == {"optimize": 0, "answer": 0, "judge": 0}
    assert len(judge_requests(judge_server)) == 10 + 4
    assert len(answer_server.requests) == 20 + 2
    assert result_row(result.summary, "vicuna")["n"] == 10


def test_concurrency_and_rate_limits_hold(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most seen
    starts: list[float] = []

    def slow_judge(text: str) -> str:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            starts.append(time.monotonic())
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return "[[C]]"

    judge_server.responder = slow_judge
    config = make_config(
        tmp_path,
        shared_dir,
        answer_server,
        judge_server,
        sample_size=12,
        concurrency=3,
        requests_per_second=40,
    )
    run_eval(config, optimizer=detail_optimizer())
    assert len(starts) == 12
    assert 2 <= in_flight[1] <= 3
    # 40 starts a second: 12 requests span at least 11 intervals of 25 ms.
    assert max(starts) - min(starts) >= 11 * 0.025 * 0.9


def test_failed_calls_leave_pairs_missing_until_the_next_run(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    # HTTP 400 is not retried: two answers fail, their pairs cannot be judged this run.
    answer_server.inject(Fault("status", status=400), Fault("status", status=400))
    config = make_config(tmp_path, shared_dir, answer_server, judge_server, sample_size=10)
    first = run_eval(config, optimizer=detail_optimizer())
    assert first.failures["answer"] == 2
    assert first.summary["run"]["pairs_missing"] in (1, 2)
    judged = first.summary["run"]["pairs_judged"]
    assert judged == 10 - first.summary["run"]["pairs_missing"]
    assert "HTTP 400" in first.summary["run"]["first_errors"]["answer"]
    assert "missing: re-run to complete them" in first.report_path.read_text()

    answers_before, judges_before = len(answer_server.requests), len(judge_requests(judge_server))
    second = run_eval(config, optimizer=detail_optimizer())
    assert second.new_calls == {"optimize": 0, "answer": 2, "judge": 10 - judged}
    assert len(answer_server.requests) - answers_before == 2
    assert len(judge_requests(judge_server)) - judges_before == 10 - judged
    assert result_row(second.summary, "vicuna")["n"] == 10


def test_an_unreachable_judge_stops_the_stage_with_a_resume_hint(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    config = make_config(
        tmp_path, shared_dir, answer_server, judge_server, sample_size=3, max_retries=1
    )
    judge_server.stop()
    with pytest.raises(StageFailedError, match=r"the judge step failed .*cannot reach"):
        run_eval(config, optimizer=detail_optimizer())
    assert len(list(read_jsonl(Path(config.output_dir) / "answers.jsonl"))) == 6


def test_unparsable_verdicts_are_counted_and_reported(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    replies: list[str] = []

    def sloppy_judge(text: str) -> str:
        question = _QUESTION.search(text)
        assert question is not None
        size = len(question.group(1))
        if size % 3 == 0:
            reply = "Both answers have merit; I cannot choose."
        elif size % 3 == 1:
            reply = "Explanation.\n\n[[A]] or [[B]]"
        else:
            reply = prefers_detailed(text)
        replies.append(reply)
        return reply

    judge_server.responder = sloppy_judge
    config = make_config(
        tmp_path,
        shared_dir,
        answer_server,
        judge_server,
        judge_price_input=1.0,
        judge_price_output=2.0,
    )
    result = run_eval(config, optimizer=detail_optimizer())
    unparsable = sum("[[C]]" not in r and "[[A]]\n" not in r and "\n\n[[" not in r for r in replies)
    ambiguous = sum(r.endswith("[[A]] or [[B]]") for r in replies)
    invalid = unparsable + ambiguous
    assert 0 < invalid < 80
    row = result_row(result.summary, "vicuna")
    assert row["n"] == 80 and row["invalid"] == invalid
    assert row["win"] == 80 - invalid
    assert row["invalid_rate"] == pytest.approx(invalid / 80)
    assert result.summary["invalid_verdicts"] == invalid
    errors = {r["parse_error"] for r in judgments(config) if r["outcome"] == "invalid"}
    assert errors == {
        "no [[A]], [[B]] or [[C]] verdict",
        "ambiguous: [[A]], [[B]] in the final verdict",
    }
    assert f"- Invalid verdicts: {invalid}" in result.report_path.read_text()

    # The cost counter uses the usage the judge endpoint reported.
    records = judgments(config)
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    completion_tokens = sum(r["completion_tokens"] for r in records)
    assert prompt_tokens > 80 * 50
    usage = result.summary["run"]["usage_total"]["judge"]
    assert usage["calls_with_usage"] == 80
    assert usage["cost_usd"] == pytest.approx((prompt_tokens + 2 * completion_tokens) / 1e6)


def test_tgi_chat_answering_and_alpaca_ranking_judge(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    def ranking_judge(text: str) -> str:
        first = text.split('"answer": """', 2)[1]
        if first.startswith("DETAILED"):
            return "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
        return "[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]"

    judge_server.responder = ranking_judge
    config = make_config(
        tmp_path,
        shared_dir,
        answer_server,
        judge_server,
        sample_size=12,
        answer_backend="tgi",
        answer_url=answer_server.url,
        answer_model="tgi",
        judge_backend="tgi",
        judge_url=judge_server.url,
        judge_model="tgi",
        judge_prompt="alpaca-ranking",
    )
    with hf_inference_online():
        result = run_eval(config, optimizer=detail_optimizer())
    row = result_row(result.summary, "vicuna")
    assert (row["n"], row["win"]) == (12, 12)

    _, answer_body = answer_server.requests[0]
    assert answer_body["temperature"] == 0.7 and answer_body["max_tokens"] == 2048
    assert "top_p" not in answer_body or answer_body["top_p"] is None
    assert [m["role"] for m in answer_body["messages"]] == ["user"]
    _, judge_body = judge_server.requests[0]
    assert judge_body["temperature"] == 0.0 and judge_body["max_tokens"] == 512
    (message,) = judge_body["messages"]
    assert message["content"].startswith("I want you to create a leaderboard")


def test_local_answering_model_with_its_chat_template(
    tmp_path: Path, shared_dir: Path, tiny_llama_dir: Path, judge_server: ScriptedServer
) -> None:
    judge_server.responder = lambda text: "[[C]]"
    config = EvalConfig(
        output_dir=str(tmp_path / "run"),
        testsets=["vicuna"],
        data_dir=str(shared_dir / "data" / "bpo"),
        sample_size=2,
        optimizer_model="detail-suffix",
        answer_backend="local",
        answer_model=str(tiny_llama_dir),
        answer_max_tokens=8,
        judge_url=judge_server.url + "/v1",
        judge_model="scripted-bpo",
        progress=False,
        bootstrap_samples=100,
    )
    result = run_eval(config, optimizer=detail_optimizer())
    answers = list(read_jsonl(Path(config.output_dir) / "answers.jsonl"))
    assert len(answers) == 4
    for record in answers:
        assert 1 <= record["completion_tokens"] <= 8
        assert record["prompt_tokens"] > len(record["prompt"].split())
    assert result_row(result.summary, "vicuna")["tie_rate"] == 1.0


def test_iterative_rounds_are_each_answered_and_judged(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    def needs_two_rounds(text: str) -> str:
        a, b = answers_of(text)
        level_a, level_b = (
            int(x.split(":")[0][10:]) if x.startswith("DETAILED") else 0 for x in (a, b)
        )
        if max(level_a, level_b) < 2:
            return "[[C]]"
        return "[[A]]" if level_a > level_b else "[[B]]"

    judge_server.responder = needs_two_rounds
    config = make_config(tmp_path, shared_dir, answer_server, judge_server, sample_size=8, rounds=3)
    result = run_eval(config, optimizer=detail_optimizer())

    optimized = list(read_jsonl(Path(config.output_dir) / "optimized.jsonl"))
    assert all([r["rounds"][i].count(SUFFIX) for i in range(3)] == [1, 2, 3] for r in optimized)
    assert len(answer_server.requests) == 8 * 4
    assert len(judge_requests(judge_server)) == 8 * 3
    deltas = [result_row(result.summary, "vicuna", r)["delta_wr"] for r in (1, 2, 3)]
    assert deltas == [0.0, 1.0, 1.0]
    report = result.report_path.read_text()
    assert "| vicuna | +0.0 | +100.0 | +100.0 |" in report
    assert (Path(config.output_dir) / "rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_optimized_file_and_what_each_setting_invalidates(
    tmp_path: Path, shared_dir: Path, answer_server: ScriptedServer, judge_server: ScriptedServer
) -> None:
    vicuna = [json.loads(line) for line in (shared_dir / "data/bpo/vicuna_eval.jsonl").open()]
    optimized_file = tmp_path / "vicuna_bpo.jsonl"
    optimized_file.write_text(
        "".join(
            json.dumps({"id": r["question_id"], "optimized_prompt": f"Rewritten: {r['text']}"})
            + "\n"
            for r in vicuna
        )
    )
    config = make_config(
        tmp_path,
        shared_dir,
        answer_server,
        judge_server,
        sample_size=10,
        optimizer="file",
        optimized_file=str(optimized_file),
    )
    first = run_eval(config)
    assert first.new_calls == {"optimize": 0, "answer": 20, "judge": 10}
    asked = {body["messages"][0]["content"] for _, body in answer_server.requests}
    rewritten = {p for p in asked if p.startswith("Rewritten: ")}
    assert len(rewritten) == 10 and len(asked) == 20

    config.judge_temperature = 0.5
    assert run_eval(config).new_calls == {"optimize": 0, "answer": 0, "judge": 10}
    # New answers; this scripted model writes the same texts again, and a judgment is keyed on the
    # texts it compares, so the judge is not asked again.
    config.answer_temperature = 0.2
    assert run_eval(config).new_calls == {"optimize": 0, "answer": 20, "judge": 0}
    answer_server.responder = lambda prompt: "DETAILED " + answering_model(prompt)
    config.answer_max_tokens = 100
    assert run_eval(config).new_calls == {"optimize": 0, "answer": 20, "judge": 10}
    assert run_eval(config).new_calls == {"optimize": 0, "answer": 0, "judge": 0}


def test_cli_runs_the_eval_stage(
    tmp_path: Path,
    shared_dir: Path,
    answer_server: ScriptedServer,
    judge_server: ScriptedServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a color."}\n{"prompt": "Name a fruit."}\n')
    out = tmp_path / "cli-run"
    status = main(
        [
            "eval",
            "--testsets",
            str(prompts),
            "--optimizer",
            "none",
            "--answer_url",
            answer_server.url + "/v1",
            "--answer_model",
            "scripted-bpo",
            "--judge_url",
            judge_server.url + "/v1",
            "--judge_model",
            "scripted-bpo",
            "--output_dir",
            str(out),
            "--no_progress",
            "--bootstrap_samples",
            "100",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert re.search(r"prompts\s+1\s+2\s+", printed)
    assert f"report: {out / 'report.md'}" in printed
    assert (out / "summary.json").is_file() and (out / "winrates.png").is_file()

    assert main(["eval", "--optimizer", "file", "--no_progress"]) == 2
    assert "needs optimized_file" in capsys.readouterr().err
