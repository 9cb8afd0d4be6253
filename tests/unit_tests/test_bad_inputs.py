"""Every bad input gets its documented outcome: a clear error, or a pass-through with a reason.

Each row of README.md's "Bad inputs" table is backed by a test here (or, for inputs that need a server,
in ``tests/integration_tests/test_fault_tolerance.py``); ``test_every_documented_row_is_tested``
keeps the table and the tests in step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from pydantic import Field
from typer.testing import CliRunner

from bpo_integrations import BPOOptimizer, FallbackReason
from bpo_integrations.cli import app
from bpo_integrations.jsonl import JsonlError, read_jsonl
from bpo_integrations.langchain import BPORunnable
from bpo_integrations.testing.backends import RecordingBackend

REPO = Path(__file__).resolve().parents[2]
SUFFIX = " Explain step by step."
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
DEAD_TGI = ["--backend", "tgi", "--endpoint", "http://127.0.0.1:9"]  # never called in these tests
runner = CliRunner()


class RecordingFakeChatModel(FakeListChatModel):
    responses: list[str] = Field(default_factory=lambda: ["answer"])
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.seen.append(list(messages))
        return super()._call(messages, *args, **kwargs)


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend(SUFFIX)


@pytest.fixture
def optimizer(backend: RecordingBackend) -> BPOOptimizer:
    return BPOOptimizer(backend, cache_size=0)


def chain_input(optimizer: BPOOptimizer, question: str) -> tuple[str, dict[str, Any]]:
    """What the model of ``prompt | bpo | llm`` is given, and the ``bpo_optimize`` record."""
    model = RecordingFakeChatModel()
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    runs = RunCollectorCallbackHandler()
    (prompt | BPORunnable(optimizer=optimizer) | model).invoke(
        {"question": question}, {"callbacks": [runs]}
    )
    stack = list(runs.traced_runs)
    while stack:
        run = stack.pop()
        if run.name == "bpo_optimize":
            return str(model.seen[0][-1].content), run.outputs
        stack.extend(run.child_runs)
    raise AssertionError("no bpo_optimize run")


# -- empty and whitespace prompts -----------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  \r\n"])
def test_empty_or_whitespace_prompt_passes_through(optimizer, backend, prompt) -> None:
    result = optimizer.optimize(prompt)
    assert (result.fell_back, result.fallback_reason) == (True, "empty_input")
    assert result.optimized == result.text == prompt
    given, record = chain_input(optimizer, prompt)
    assert given == prompt and record["fallback_reason"] == "empty_input"
    assert backend.prompts == []  # never sent to the backend


# -- a 1 MB prompt --------------------------------------------------------------------------------


def test_one_megabyte_prompt_passes_through_unchanged(optimizer, backend) -> None:
    huge = "Summarize this log line by line. " + "x" * 1_000_000
    result = optimizer.optimize(huge)
    assert result.fell_back and result.optimized == huge
    assert result.fallback_reason is FallbackReason.INPUT_TOO_LONG
    assert result.fallback_message == f"input_too_long: {len(huge)} characters, limit 8000"
    given, record = chain_input(optimizer, huge)
    assert given == huge and record["fallback_reason"].startswith("input_too_long")
    assert backend.prompts == []


def test_one_megabyte_prompt_raises_when_asked_to(backend) -> None:
    strict = BPOOptimizer(backend, on_error="raise", max_input_chars=100_000)
    with pytest.raises(ValueError, match=r"input_too_long: 1000000 characters, limit 100000"):
        strict.optimize("y" * 1_000_000)
    assert backend.prompts == []


# -- non-text message content ---------------------------------------------------------------------


def test_image_only_human_message_passes_through(optimizer, backend) -> None:
    bpo = BPORunnable(optimizer=optimizer)
    only_image = [HumanMessage(content=[IMAGE], id="img")]
    assert bpo.invoke(only_image) == only_image
    # The newest turn has no text: an earlier text turn is not rewritten in its place.
    history = [HumanMessage("Describe cats"), AIMessage("Cats are..."), *only_image]
    assert bpo.invoke(history) == history
    assert backend.prompts == []


def test_empty_message_list_and_empty_content_pass_through(optimizer, backend) -> None:
    bpo = BPORunnable(optimizer=optimizer)
    assert bpo.invoke([]) == []
    assert bpo.invoke([HumanMessage(content=[])]) == [HumanMessage(content=[])]
    assert backend.prompts == []


# -- None and wrong types -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["a list"], {"a": "dict"}])
def test_optimizer_rejects_a_non_string_prompt(optimizer, bad) -> None:
    with pytest.raises(TypeError, match=rf"a prompt must be a str, got {type(bad).__name__}"):
        optimizer.optimize(bad)


@pytest.mark.parametrize("bad", [None, 42, b"bytes", 3.5])
def test_runnable_rejects_a_non_prompt_input(optimizer, bad) -> None:
    bpo = BPORunnable(optimizer=optimizer)
    message = rf"got {type(bad).__name__} as input; it accepts str, StringPromptValue"
    with pytest.raises(TypeError, match=message):
        bpo.invoke(bad)
    with pytest.raises(TypeError, match=rf"got {type(bad).__name__} as input\['input'\]"):
        bpo.invoke({"input": bad})


def test_runnable_rejects_a_message_without_content(optimizer) -> None:
    bpo = BPORunnable(optimizer=optimizer)
    with pytest.raises(TypeError, match=r"could not read input as a list of messages"):
        bpo.invoke([("human", None)])


def test_wrong_argument_types_and_shapes_are_named(optimizer) -> None:
    with pytest.raises(TypeError, match=r"takes a list of prompts, not a single string"):
        optimizer.optimize_batch("one string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a context must be a str or None, got int"):
        optimizer.optimize("hi", context=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got 2 prompts but 1 contexts"):
        optimizer.optimize_batch(["a", "b"], contexts=["c"])
    with pytest.raises(ValueError, match=r"unknown mode 'wild': choose 'stable'"):
        optimizer.optimize("hi", mode="wild")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"iterations must be >= 1, got 0"):
        optimizer.optimize("hi", iterations=0)


def test_unencodable_text_is_passed_to_the_backend_verbatim(optimizer, backend) -> None:
    # A lone surrogate or a NUL is valid in a Python str: the optimizer does not judge content.
    odd = "bad \ud800 surrogate and a \x00 NUL"
    result = optimizer.optimize(odd)
    assert (result.fell_back, result.optimized) == (False, odd + SUFFIX)
    assert backend.prompts == [odd]


# -- invalid UTF-8 in files -----------------------------------------------------------------------


def test_read_jsonl_names_the_line_with_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(JsonlError, match=r"bad\.jsonl:2: not valid UTF-8 \(invalid continuation"):
        list(read_jsonl(path))


def test_cli_input_file_with_invalid_utf8_is_a_usage_error(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9 cr\xe8me"}\n')
    result = runner.invoke(app, ["optimize", "-i", str(source), "-o", str(out), *DEAD_TGI])
    assert result.exit_code == 2
    assert "in.jsonl:2: not valid UTF-8" in result.output
    assert "must be UTF-8 JSONL" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # the whole file is checked before any work


def test_cli_stdin_with_invalid_utf8_is_a_usage_error() -> None:
    result = runner.invoke(app, ["optimize", *DEAD_TGI], input=b"\xff\xfe broken")
    assert result.exit_code == 2
    assert "stdin is not valid UTF-8" in result.output and "iconv" in result.output


def test_cli_empty_prompts_in_a_file_pass_through(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"id": 1, "prompt": ""}\n{"id": 2, "prompt": "  "}\n', encoding="utf-8")
    result = runner.invoke(app, ["optimize", "-i", str(source), "-o", str(out), *DEAD_TGI])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["optimized"], r["result"]["fallback_reason"]) for r in lines] == [
        ("", "empty_input"),
        ("  ", "empty_input"),
    ]


# -- the table in README.md --------------------------------------------------------------

DOCUMENTED = {
    "Empty prompt": "test_empty_or_whitespace_prompt_passes_through",
    "Whitespace-only prompt": "test_empty_or_whitespace_prompt_passes_through",
    "Prompt over `max_input_chars` (a 1 MB prompt)": "test_one_megabyte_prompt_passes_through_unchanged",
    'Prompt over `max_input_chars`, `on_error="raise"`': "test_one_megabyte_prompt_raises_when_asked_to",
    "Image-only `HumanMessage` (no text block)": "test_image_only_human_message_passes_through",
    "Empty message list, empty content list": "test_empty_message_list_and_empty_content_pass_through",
    "`None` or a non-str prompt (`int`, `bytes`, list, dict)": "test_optimizer_rejects_a_non_string_prompt",
    "`None` or another type given to `BPORunnable`": "test_runnable_rejects_a_non_prompt_input",
    'A message that LangChain cannot read (`("human", None)`)': "test_runnable_rejects_a_message_without_content",
    "One string to `optimize_batch`, a non-str context, mismatched lengths, unknown mode, `iterations=0`": "test_wrong_argument_types_and_shapes_are_named",
    "Lone surrogate or NUL in the prompt, custom backend": "test_unencodable_text_is_passed_to_the_backend_verbatim",
    "Lone surrogate in the prompt, TGI or OpenAI backend": "test_unencodable_prompt_falls_back_on_http_backends",
    "Invalid UTF-8 in a JSONL file (`read_jsonl`)": "test_read_jsonl_names_the_line_with_invalid_utf8",
    "Invalid UTF-8 in `bpo optimize --input` file": "test_cli_input_file_with_invalid_utf8_is_a_usage_error",
    "Invalid UTF-8 on `bpo optimize` stdin": "test_cli_stdin_with_invalid_utf8_is_a_usage_error",
    "Empty prompts in a `bpo optimize --input` file": "test_cli_empty_prompts_in_a_file_pass_through",
}


def test_every_documented_row_is_tested() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Bad inputs", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (?!Input |---)(.+?) \| .+ \| .+ \|$", table, flags=re.MULTILINE)
    assert rows == list(DOCUMENTED), "README.md's Bad inputs table and DOCUMENTED disagree"
    sources = Path(__file__).read_text(encoding="utf-8") + (
        REPO / "tests" / "integration_tests" / "test_fault_tolerance.py"
    ).read_text(encoding="utf-8")
    for name in set(DOCUMENTED.values()):
        assert f"def {name}(" in sources, name
