"""``bpo optimize`` through typer's CliRunner on a real tiny model and real local HTTP servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bpo_integrations import BPOOptimizer
from bpo_integrations.cli import app
from bpo_integrations.settings import GenerationSettings

pytest.importorskip("torch")
pytest.importorskip("transformers")

from bpo_integrations.backends.local import LocalBackend

PROMPTS = ["Tell me about Harry Potter", "Why is the sky blue?", "Write a haiku about rain", "Hi"]
MAX_NEW_TOKENS = 12
runner = CliRunner()


@pytest.fixture(scope="module")
def stopping_llama(tmp_path_factory: pytest.TempPathFactory, bpo_val_records: list[dict]) -> Path:
    """A tiny random Llama whose generation config ends its rewrites after two or three tokens
    (greedy, and sampled with seed 5).

    A random model never writes its eos, so every rewrite would run to the token limit and be
    rejected by the guards; making the tokens it writes third an eos gives short, accepted
    rewrites that differ from prompt to prompt.
    """
    from bpo_integrations.testing.tiny_models import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("stopping-llama"), seed=1, hidden_size=64)
    backend = LocalBackend(path)
    greedy = GenerationSettings.for_mode("greedy", max_new_tokens=4)
    sampled = GenerationSettings.for_mode("stable", max_new_tokens=4, seed=5)
    prompts = PROMPTS + [r["instruction"] for r in bpo_val_records[:8]]
    outputs = [g.token_ids for g in backend.generate(prompts, greedy)]
    outputs += [g.token_ids for g in backend.generate(PROMPTS, sampled)]
    backend.close()
    early = {ids[0] for ids in outputs} | {ids[1] for ids in outputs}
    stops = sorted({ids[2] for ids in outputs} - early)
    config_path = path / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], *stops]
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def oracle(stopping_llama: Path) -> Iterator[BPOOptimizer]:
    """What the CLI must print: the library's own greedy optimizer on the same model."""
    settings = GenerationSettings.for_mode("greedy", max_new_tokens=MAX_NEW_TOKENS)
    optimizer = BPOOptimizer(LocalBackend(stopping_llama), settings=settings, timeout=120)
    yield optimizer
    optimizer.close()


def local_args(model: Path, *extra: str) -> list[str]:
    return [
        "optimize",
        *extra,
        "--model",
        str(model),
        "--mode",
        "greedy",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
    ]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_clean_error(result: Any, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # one line, said last
    for fragment in fragments:
        assert fragment in errors[0]


# -- single prompts -----------------------------------------------------------------------------


def test_single_prompt_prints_the_libraries_rewrite(
    stopping_llama: Path, oracle: BPOOptimizer
) -> None:
    expected = oracle.optimize(PROMPTS[0])
    assert not expected.fell_back and expected.optimized != PROMPTS[0]
    result = runner.invoke(app, local_args(stopping_llama, PROMPTS[0]))
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.optimized + "\n"


def test_json_prints_the_full_result_record(stopping_llama: Path, oracle: BPOOptimizer) -> None:
    expected = oracle.optimize(PROMPTS[1])
    result = runner.invoke(app, local_args(stopping_llama, PROMPTS[1], "--json"))
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["original"] == PROMPTS[1]
    assert record["optimized"] == record["text"] == expected.optimized
    assert record["backend"] == "local" and record["fell_back"] is False
    assert record["rounds"] == [expected.optimized]


@pytest.mark.parametrize("argument", [[], ["-"]])
def test_prompt_from_stdin(stopping_llama: Path, oracle: BPOOptimizer, argument: list[str]) -> None:
    expected = oracle.optimize(PROMPTS[2]).optimized
    result = runner.invoke(app, local_args(stopping_llama, *argument), input=PROMPTS[2] + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_invalid_utf8_on_stdin_is_a_clear_error(stopping_llama: Path) -> None:
    result = runner.invoke(app, local_args(stopping_llama), input=b"caf\xe9 au lait\n")
    assert_clean_error(result, 2, "stdin is not valid UTF-8")


def test_empty_stdin_is_a_clear_error(stopping_llama: Path) -> None:
    assert_clean_error(runner.invoke(app, local_args(stopping_llama), input=""), 2, "empty")


def test_iterations_and_seed_reach_the_optimizer(stopping_llama: Path) -> None:
    args = ["optimize", PROMPTS[0], "--model", str(stopping_llama), "--json"]
    sampled = [*args, "--mode", "stable", "--seed", "5", "--iterations", "2"]
    first = runner.invoke(app, sampled)
    second = runner.invoke(app, sampled)
    assert first.exit_code == second.exit_code == 0, first.output
    record = json.loads(first.stdout)
    assert record["optimized"] == json.loads(second.stdout)["optimized"]
    assert 1 <= len(record["rounds"]) <= 2
    settings = GenerationSettings.for_mode("stable", seed=5)
    expected = BPOOptimizer(LocalBackend(stopping_llama), settings=settings, iterations=2)
    try:
        assert record["optimized"] == expected.optimize(PROMPTS[0]).optimized
    finally:
        expected.close()


# -- JSONL files --------------------------------------------------------------------------------


def test_file_of_real_bpo_records_with_another_prompt_field(
    stopping_llama: Path, oracle: BPOOptimizer, bpo_val_records: list[dict], tmp_path: Path
) -> None:
    records = [
        {"instruction": r["instruction"], "context": r["context"] or None, "source": r["source"]}
        for r in bpo_val_records[:6]
    ]
    # the guards reject a random model's rewrite of a real instruction (changed_intent): one
    # short prompt they cannot judge keeps an accepted rewrite in the file
    records.append({"instruction": PROMPTS[0], "context": None, "source": "test"})
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        local_args(
            stopping_llama, "-i", str(source), "-o", str(out), "--prompt-field", "instruction"
        ),
    )
    assert result.exit_code == 0, result.output
    lines = read_jsonl(out)
    expected = oracle.optimize_batch(
        [r["instruction"] for r in records], contexts=[r["context"] for r in records]
    )
    assert len(lines) == len(records)
    for number, (record, line, want) in enumerate(zip(records, lines, expected, strict=True), 1):
        assert {k: line[k] for k in record} == record  # the input fields are kept as they were
        assert line["input_line"] == number
        assert line["result"]["original"] == record["instruction"]
        assert line["optimized"] == want.optimized
        assert line["result"]["context"] == record["context"]
        assert line["result"]["text"] == want.text
    assert any(not line["result"]["fell_back"] for line in lines)


def test_resume_skips_finished_lines_and_drops_a_cut_off_one(
    stopping_llama: Path, tmp_path: Path
) -> None:
    records: list[dict[str, Any]] = [
        {"prompt": f"{p} (take {n})"} | ({"id": f"q{n}"} if n % 2 else {})
        for n, p in enumerate(PROMPTS * 2, start=1)
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    reference = tmp_path / "reference.jsonl"
    first = runner.invoke(app, local_args(stopping_llama, "-i", str(source), "-o", str(reference)))
    assert first.exit_code == 0, first.output
    full = read_jsonl(reference)
    assert len(full) == len(records)

    # an interrupted run: three lines written (one marked), then a crash in the middle of a line
    out = tmp_path / "out.jsonl"
    kept = [dict(full[0]), dict(full[1]), dict(full[2])]
    kept[1]["optimized"] = "WRITTEN BY THE FIRST RUN"
    cut_off = json.dumps(full[3])[:25]
    out.write_text("".join(json.dumps(k) + "\n" for k in kept) + cut_off, encoding="utf-8")

    resumed = runner.invoke(
        app, local_args(stopping_llama, "-i", str(source), "-o", str(out), "--json")
    )
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary == {
        "output": str(out),
        "written": len(records) - 3,
        "skipped": 3,
        "fell_back": summary["fell_back"],
        "timed_out": 0,
        "total": len(records),
    }
    lines = read_jsonl(out)  # every line parses: the cut-off fragment is gone
    assert lines[:3] == kept  # untouched, not recomputed
    keys = [line.get("id", line["input_line"]) for line in lines]
    assert len(keys) == len(set(keys)) == len(records)  # none repeated, none lost
    by_line = {line["input_line"]: line for line in lines}
    for reference_line in full[3:]:
        line = by_line[reference_line["input_line"]]
        assert line["optimized"] == reference_line["optimized"]
        assert line.get("id") == reference_line.get("id")

    again = runner.invoke(app, local_args(stopping_llama, "-i", str(source), "-o", str(out)))
    assert again.exit_code == 0 and read_jsonl(out) == lines  # a finished file stays as it is


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": oops}\n', ["in.jsonl:3: not valid JSON"]),
        (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', ["in.jsonl:2: not valid UTF-8"]),
        (b'{"prompt": "a"}\n["prompt", "b"]\n', ["in.jsonl:2: expected a JSON object"]),
        (
            b'{"prompt": "a"}\n\n{"text": "b"}\n',
            ["in.jsonl:3: no 'prompt' field", "--prompt-field"],
        ),
        (b'{"prompt": "a", "context": 3}\n', ["in.jsonl:1: 'context' must be a string"]),
        (b'{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', ["in.jsonl:2: duplicate id 1"]),
    ],
)
def test_bad_input_files_name_the_line(
    stopping_llama: Path, tmp_path: Path, content: bytes, fragments: list[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, local_args(stopping_llama, "-i", str(source), "-o", str(out)))
    assert_clean_error(result, 2, *fragments)
    assert not out.exists()


def test_missing_input_file(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["optimize", "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")]
    )
    assert_clean_error(result, 2, "nope.jsonl", "does not exist")


# -- backends and their failures ----------------------------------------------------------------


def test_tgi_and_openai_backends_reach_a_real_server() -> None:
    from bpo_integrations.testing.servers import ScriptedServer, hf_inference_online

    rewrite = "Describe the Harry Potter series: plot, main characters and themes."
    with ScriptedServer(lambda text: rewrite, model_id="THUDM/BPO") as server:
        with hf_inference_online():
            tgi = runner.invoke(
                app, ["optimize", "harry potter", "--backend", "tgi", "--endpoint", server.url]
            )
        chat = runner.invoke(
            app,
            [
                "optimize",
                "harry potter",
                "--backend",
                "openai",
                "--endpoint",
                server.url + "/v1",
                "--model",
                "THUDM/BPO",
            ],
        )
        paths = [path for path, _ in server.requests]
    assert tgi.exit_code == 0 and chat.exit_code == 0, tgi.output + chat.output
    assert tgi.stdout == chat.stdout == rewrite + "\n"
    assert paths[0] in ("/", "/generate") and paths[1] == "/v1/completions"  # TGI, then OpenAI


def test_unreachable_endpoint_is_an_error_not_an_echo(tmp_path: Path) -> None:
    from bpo_integrations.testing.servers import hf_inference_online, unused_url

    url = unused_url()
    chat = runner.invoke(
        app,
        [
            "optimize",
            "hello",
            "--backend",
            "openai",
            "--endpoint",
            url + "/v1",
            "--model",
            "THUDM/BPO",
        ],
    )
    assert_clean_error(chat, 1, "unreachable", url)
    assert "hello" not in chat.stdout
    with hf_inference_online():
        tgi = runner.invoke(app, ["optimize", "hello", "--backend", "tgi", "--endpoint", url])
    assert_clean_error(tgi, 1, "unreachable", url)

    # in file mode nothing is written, so that a later run does those lines
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "out.jsonl"
    batch = runner.invoke(
        app,
        [
            "optimize",
            "-i",
            str(source),
            "-o",
            str(out),
            "--backend",
            "openai",
            "--endpoint",
            url + "/v1",
            "--model",
            "THUDM/BPO",
        ],
    )
    assert_clean_error(batch, 1, "unreachable", "0 lines written", "rerun")
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("/nonexistent/bpo-model", ["cannot load the optimizer model", "does not exist"]),
        ("THUDM/BPO", ["'THUDM/BPO'", "optimum-intel", "optimum-cli export openvino"]),
    ],
)
def test_missing_model_is_a_clear_error(model: str, fragments: list[str]) -> None:
    from huggingface_hub import constants

    if model == "THUDM/BPO" and not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest.py)")
    result = runner.invoke(app, ["optimize", "hello", "--model", model])
    assert_clean_error(result, 1, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["x", "--backend", "tgi"], ["--backend tgi needs --endpoint"]),
        (["x", "--backend", "tgi", "--endpoint", "localhost:8080"], ["http(s) URL"]),
        (["x", "--backend", "openai", "--endpoint", "http://h/v1"], ["needs --model"]),
        (["x", "--backend", "openai", "--model", "m", "--adapter", "a"], ["--adapter only"]),
        (["x", "--endpoint", "http://h"], ["--endpoint is for --backend tgi or openai"]),
        (["x", "--precision", "int3"], ["precision must be one of f16, q8_0, q4_0"]),
        (["x", "-i", "in.jsonl", "-o", "out.jsonl"], ["either a prompt or --input"]),
        (["-i", "in.jsonl"], ["--input and --output go together"]),
    ],
)
def test_option_mistakes_are_named(args: list[str], fragments: list[str]) -> None:
    assert_clean_error(runner.invoke(app, ["optimize", *args]), 2, *fragments)


def test_installed_bpo_script_runs_the_file_mode(stopping_llama: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "bpo"
    if not script.is_file():
        pytest.skip("the bpo console script is not installed in this environment")
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": p, "id": i} for i, p in enumerate(PROMPTS)]
    )
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    run = subprocess.run(
        [str(script), *local_args(stopping_llama, "-i", str(source), "-o", str(out))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert [line["id"] for line in read_jsonl(out)] == list(range(len(PROMPTS)))
    assert "4 optimized" in run.stderr


def test_a_prompt_that_runs_out_of_time_is_written_and_the_job_goes_on(tmp_path: Path) -> None:
    from bpo_integrations.testing.servers import Fault, ScriptedServer, hf_inference_online

    words = ["sky", "sea", "tea", "cats", "rain", "maps"]
    records = [{"id": i, "prompt": f"Tell me about {w}"} for i, w in enumerate(words)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    with ScriptedServer(lambda text: "A clearer question, step by step.") as server:
        server.inject(Fault("hang", seconds=5))  # the first request waits past its budget
        with hf_inference_online():
            result = runner.invoke(
                app,
                [
                    "optimize",
                    "-i",
                    str(source),
                    "-o",
                    str(out),
                    "--backend",
                    "tgi",
                    "--endpoint",
                    server.url,
                    "--timeout",
                    "1",
                    "--concurrency",
                    "2",
                    "--json",
                ],
            )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 6 and summary["timed_out"] == 1
    lines = read_jsonl(out)
    assert sorted(line["id"] for line in lines) == list(range(6))  # every line, once
    late = [line for line in lines if line["result"]["fell_back"]]
    assert len(late) == 1 and late[0]["result"]["fallback_reason"].startswith("timeout")
    assert late[0]["optimized"] == late[0]["prompt"]
