"""Stage ``construct`` against a REAL local OpenAI-compatible server (``ScriptedServer``)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bpo_trainer.construct import ConstructConfig, run_construct
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.process import ProcessConfig, run_process
from bpo_trainer.prompts import CTX_PROMPT, NO_CTX_PROMPT, build_construction_prompt
from rich.console import Console

from bpo_integrations.jsonl import read_jsonl
from bpo_integrations.testing.servers import Fault, ScriptedServer

pytest.importorskip("openai")

MODEL = "scripted-bpo"


def _instruction_of(prompt: str) -> str:
    first_line = prompt.split("\n", 1)[0]
    return first_line.removeprefix('instruction: "').removesuffix('"')


def _answer(prompt: str) -> str:
    instruction = _instruction_of(prompt)
    return (
        "Detailed Comparison Result: the good response is more specific.\n"
        f"Optimized Instruction: {instruction.rstrip('.')} and explain your reasoning. [END]"
    )


class Responder:
    """Answers like ChatGPT and records which instruction each answered request was for."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, prompt: str) -> str:
        time.sleep(self.delay)
        with self._lock:
            self.calls.append((_instruction_of(prompt), time.monotonic()))
        return _answer(prompt)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(instruction for instruction, _ in self.calls)


def _feedback(n: int) -> list[dict[str, Any]]:
    records = []
    for i in range(n):
        record: dict[str, Any] = {
            "id": f"rec-{i:03d}",
            "source": "alpaca-gpt4" if i % 3 == 0 else "hh-rlhf",
            "instruction": f"Describe topic number {i} in simple words.",
            "good_res": f"Topic {i} is explained step by step with an example.",
            "bad_res": f"Topic {i}.",
        }
        if i % 3 == 0:
            record["context"] = f"Notes about topic {i}" if i % 2 else ""
        records.append(record)
    return records


def _write_input(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _config(tmp_path: Path, server: ScriptedServer, **overrides: Any) -> ConstructConfig:
    values: dict[str, Any] = {
        "input_file": str(tmp_path / "feedback.jsonl"),
        "output_file": str(tmp_path / "constructed.jsonl"),
        "base_url": server.url + "/v1",
        "model": MODEL,
        "concurrency": 4,
        "requests_per_minute": 0,
        "retry_initial_wait": 0.01,
        "retry_max_wait": 0.5,
        "request_timeout": 10,
    }
    values.update(overrides)
    return ConstructConfig(**values)


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def _chat_bodies(server: ScriptedServer) -> list[dict[str, Any]]:
    return [body for path, body in server.requests if path == "/v1/chat/completions"]


def _assert_no_repeat_no_drop(
    output: Path,
    records: list[dict[str, Any]],
    answered: Counter[str],
    finished_first: set[str],
    in_flight: int,
) -> None:
    ids = [row["id"] for row in read_jsonl(output)]
    assert sorted(ids) == sorted(r["id"] for r in records)  # every record once, none twice
    by_instruction = {r["instruction"]: r["id"] for r in records}
    per_id = Counter({by_instruction[text]: count for text, count in answered.items()})
    # a record finished before the interruption was never asked again
    assert all(per_id[record_id] == 1 for record_id in finished_first)
    # at most the requests in flight at the interruption were answered twice
    assert set(per_id.values()) <= {1, 2}
    assert sum(1 for count in per_id.values() if count == 2) <= in_flight


# -- restart safety -------------------------------------------------------------------------------

_CRASHING_JOB = """
import json, sys
from rich.console import Console
from bpo_trainer.construct import ConstructConfig, run_construct
run_construct(ConstructConfig(**json.loads(sys.argv[1])), console=Console(quiet=True))
"""


def test_a_crash_mid_run_loses_only_requests_in_flight(tmp_path: Path) -> None:
    records = _feedback(30)
    _write_input(tmp_path / "feedback.jsonl", records)
    responder = Responder(delay=0.05)
    with ScriptedServer(responder, model_id=MODEL) as server:
        config = _config(tmp_path, server)
        job = subprocess.Popen(
            [sys.executable, "-c", _CRASHING_JOB, json.dumps(config.__dict__)],
            env={**os.environ, "OPENAI_API_KEY": ""},
        )
        output = Path(config.output_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and job.poll() is None:
            if output.exists() and output.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
        assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
        finished_first = {row["id"] for row in read_jsonl(output, allow_truncated_tail=True)}
        assert 8 <= len(finished_first) < len(records)

        summary = run_construct(config, console=_quiet())
        assert summary["already_done"] == len(finished_first)
        assert summary["succeeded"] == len(records) - len(finished_first)
        _assert_no_repeat_no_drop(
            output, records, responder.counts(), finished_first, in_flight=config.concurrency
        )


def test_a_failing_server_stops_the_job_and_a_restart_finishes_it(tmp_path: Path) -> None:
    records = _feedback(24)
    _write_input(tmp_path / "feedback.jsonl", records)
    first = Responder()
    failing = threading.Event()

    def fail_after_ten(prompt: str) -> str:
        answer = first(prompt)
        if sum(first.counts().values()) >= 10 and not failing.is_set():
            failing.set()
            server.inject(*[Fault("status", status=503)] * 400)
        return answer

    with ScriptedServer(fail_after_ten, model_id=MODEL) as server:
        config = _config(tmp_path, server, max_retries=1, max_consecutive_failures=4)
        with pytest.raises(StageFailedError, match="run the same command again to resume"):
            run_construct(config, console=_quiet())
    finished_first = {row["id"] for row in read_jsonl(config.output_file)}
    assert 10 <= len(finished_first) < len(records)
    errors = list(read_jsonl(config.errors_path()))
    assert errors and {e["error"] for e in errors} == {"InternalServerError"}

    second = Responder()
    with ScriptedServer(second, model_id=MODEL) as restarted:
        config = _config(tmp_path, restarted, max_retries=1)
        summary = run_construct(config, console=_quiet())
    assert summary["failed"] == 0
    assert summary["succeeded"] == len(records) - len(finished_first)
    _assert_no_repeat_no_drop(
        Path(config.output_file),
        records,
        first.counts() + second.counts(),
        finished_first,
        in_flight=config.concurrency,
    )


# -- requests, retries, cost ----------------------------------------------------------------------


def test_requests_retries_raw_answers_and_cost(tmp_path: Path) -> None:
    records = _feedback(4)
    _write_input(tmp_path / "feedback.jsonl", records)
    with ScriptedServer(Responder(), model_id=MODEL) as server:
        server.inject(
            Fault("status", status=429, retry_after=0.2),
            Fault("status", status=500),
            Fault("drop_connection"),
            Fault("malformed_json"),
            Fault("empty"),
        )
        config = _config(
            tmp_path, server, concurrency=1, prompt_price_per_1k=0.5, completion_price_per_1k=2.0
        )
        console = _quiet()
        started = time.monotonic()
        summary = run_construct(config, console=console)
        elapsed = time.monotonic() - started
        bodies = _chat_bodies(server)

    assert (summary["succeeded"], summary["failed"], summary["retries"]) == (4, 0, 5)
    assert elapsed >= 0.2  # Retry-After was honoured
    assert len(bodies) == 4 + 5
    prompts = [body["messages"][-1]["content"] for body in bodies]
    assert set(prompts) == {build_construction_prompt(r) for r in records}
    assert all(body["model"] == MODEL and body["temperature"] == 0.9 for body in bodies)
    with_context = build_construction_prompt(records[0])
    assert with_context.startswith(
        'instruction: "Describe topic number 0 in simple words."\ncontext:'
    )
    assert "3.Don't change the context" in with_context
    assert "4.There may be some protected parts" in build_construction_prompt(records[1])

    rows = {row["id"]: row for row in read_jsonl(config.output_file)}
    for record in records:
        row = rows[record["id"]]
        assert row["response"] == _answer(build_construction_prompt(record))  # the raw answer
        assert {k: row[k] for k in record} == record
        assert row["model"] == MODEL and row["finish_reason"] == "stop"
    tokens = [(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) for r in rows.values()]
    assert all(p > 0 and c > 0 for p, c in tokens)
    expected_cost = sum(p * 0.5 + c * 2.0 for p, c in tokens) / 1000
    assert summary["cost_usd"] == pytest.approx(expected_cost, abs=1e-6)
    assert "4 answered, 0 failed" in console.file.getvalue()  # type: ignore[attr-defined]

    # the answers feed `process`
    report = run_process(
        ProcessConfig(input_file=config.output_file, output_file=str(tmp_path / "train.jsonl")),
        console=_quiet(),
    )
    assert report["kept"] == 4
    pairs = list(read_jsonl(tmp_path / "train.jsonl"))
    assert all(
        p["final_output"].startswith(p["final_input"].split(".")[0])
        for p in pairs
        if not p.get("context")
    )


def test_rate_limit_spaces_requests(tmp_path: Path) -> None:
    records = _feedback(4)
    _write_input(tmp_path / "feedback.jsonl", records)
    responder = Responder()
    with ScriptedServer(responder, model_id=MODEL) as server:
        run_construct(_config(tmp_path, server, requests_per_minute=300), console=_quiet())
    times = sorted(t for _, t in responder.calls)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    assert min(gaps) >= 0.15  # 300 per minute: one start every 0.2 s


def test_errors_that_every_request_would_hit_stop_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_input(tmp_path / "feedback.jsonl", _feedback(6))
    with ScriptedServer(Responder(), model_id=MODEL) as server:
        with pytest.raises(TrainerConfigError, match=r"model 'gpt-4o'.*check --model"):
            run_construct(_config(tmp_path, server, model="gpt-4o"), console=_quiet())
        assert len(_chat_bodies(server)) <= 4  # one per worker, no retries
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TrainerConfigError, match="OPENAI_API_KEY"):
        run_construct(
            ConstructConfig(input_file=str(tmp_path / "feedback.jsonl")), console=_quiet()
        )
    bad = _write_input(tmp_path / "bad.jsonl", [{"id": "x", "instruction": "Hi there"}])
    with pytest.raises(TrainerConfigError, match="lacks good_res, bad_res"):
        run_construct(ConstructConfig(input_file=str(bad), api_key="k"), console=_quiet())
    with pytest.raises(TrainerConfigError, match="concurrency"):
        ConstructConfig(concurrency=0)


def test_prompts_are_the_papers_verbatim() -> None:
    def digest(template: str) -> str:
        for name in ("instruction", "context", "bad_res", "good_res"):
            template = template.replace("{" + name + "}", "{}")
        return hashlib.sha256(template.encode()).hexdigest()[:16]

    # sha256 of thu-coai/BPO src/data_construction/chatgpt_infer.py's ctx_prompt / no_ctx_prompt
    assert digest(CTX_PROMPT) == "7efc6911ac0e2998"
    assert digest(NO_CTX_PROMPT) == "45ae7d708dddb2b9"


def test_config_parses_from_the_command_line() -> None:
    transformers = pytest.importorskip("transformers")
    (config,) = transformers.HfArgumentParser(ConstructConfig).parse_args_into_dataclasses(
        [
            "--base_url",
            "http://localhost:8000/v1",
            "--concurrency",
            "16",
            "--requests_per_minute",
            "3500",
            "--max_tokens",
            "512",
        ]
    )
    assert (config.base_url, config.concurrency, config.max_tokens) == (
        "http://localhost:8000/v1",
        16,
        512,
    )
    assert config.model == "gpt-3.5-turbo" and config.api_key is None
