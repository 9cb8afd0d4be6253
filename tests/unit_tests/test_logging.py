"""Fallbacks are visible: a warning once per cause with the reason and the fix, debug lines per
optimization, and the standard logging configuration decides what shows."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from bpo_integrations import BPOOptimizer, _log
from bpo_integrations.backends import CallableBackend, OpenAIBackend
from bpo_integrations.testing.servers import ScriptedServer, unused_url

LOGGER = "bpo_integrations"


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    _log.reset()


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(LOGGER) and r.levelno == level]


def test_a_wrong_url_warns_once_with_the_reason_and_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    url = unused_url()
    optimizer = BPOOptimizer(OpenAIBackend("THUDM/BPO", base_url=url + "/v1"), max_retries=0)

    results = [optimizer.optimize(f"question {i}") for i in range(3)]

    assert all(r.fell_back for r in results)
    (warning,) = records(caplog, logging.WARNING)
    message = warning.getMessage()
    assert "fell back to the original prompt: backend_unavailable" in message
    assert url in message
    assert "Fix: check that the optimizer's server runs at that address" in message
    again = [r for r in records(caplog, logging.DEBUG) if "fell back again" in r.getMessage()]
    assert len(again) == 2


def test_an_unknown_model_is_another_cause_with_its_own_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with ScriptedServer(model_id="THUDM/BPO") as server:
        optimizer = BPOOptimizer(OpenAIBackend("bpo-typo", base_url=server.url + "/v1"))
        optimizer.optimize("first")
        optimizer.optimize("second")
    unreachable = BPOOptimizer(
        OpenAIBackend("THUDM/BPO", base_url=unused_url() + "/v1"), max_retries=0
    )
    unreachable.optimize("third")

    messages = [r.getMessage() for r in records(caplog, logging.WARNING)]
    assert len(messages) == 2
    assert "backend_error: model 'bpo-typo' is not served" in messages[0]
    assert "--lora-modules bpo-typo=" in messages[0]  # the fix the backend names
    assert "backend_unavailable" in messages[1]


def test_timeouts_and_long_inputs_name_their_fix(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def slow(prompt: str) -> str:
        import asyncio

        await asyncio.sleep(1)
        return prompt

    BPOOptimizer(CallableBackend(slow), timeout=0.05).optimize("hi")
    BPOOptimizer(CallableBackend(str.upper), max_input_chars=10).optimize("x" * 11)

    timeout, too_long = (r.getMessage() for r in records(caplog, logging.WARNING))
    assert "timeout:" in timeout and "raise BPOOptimizer(timeout=...)" in timeout
    assert "input_too_long: 11 characters, limit 10" in too_long
    assert "context_key" in too_long


def test_a_cause_that_persists_is_warned_again_later_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = iter([0.0, 1.0, 2.0, _log.REPEAT_AFTER_S + 5])
    monkeypatch.setattr(_log.time, "monotonic", lambda: next(clock))
    optimizer = BPOOptimizer(CallableBackend(str.upper), max_input_chars=1)
    for _ in range(4):
        optimizer.optimize("too long")

    first, later = (r.getMessage() for r in records(caplog, logging.WARNING))
    assert "more since" not in first
    assert "(2 more since the last warning)" in later


def test_rejected_rewrites_are_info_and_each_optimization_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    good = BPOOptimizer(CallableBackend(lambda p: p + " Explain step by step."))
    good.optimize("Why is the sky blue?")
    good.optimize("Why is the sky blue?")  # a cache hit
    BPOOptimizer(CallableBackend(lambda p: "")).optimize("Why?")

    debug = [r.getMessage() for r in records(caplog, logging.DEBUG)]
    assert any("optimized by callable" in m and "Explain step by step." in m for m in debug)
    assert any("cache hit" in m for m in debug)
    (info,) = records(caplog, logging.INFO)
    assert "empty_output" in info.getMessage()
    assert not records(caplog, logging.WARNING)


def test_off_by_the_standard_logging_configuration(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    BPOOptimizer(CallableBackend(str.upper), max_input_chars=1).optimize("too long")
    assert not [r for r in caplog.records if r.name.startswith(LOGGER)]


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


FALLBACKS = """
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import OpenAIBackend
    from bpo_integrations.testing.servers import unused_url
    optimizer = BPOOptimizer(OpenAIBackend("m", base_url=unused_url() + "/v1"), max_retries=0)
    for prompt in ("one", "two", "three"):
        print(optimizer.optimize(prompt).fell_back)
"""


def test_a_program_without_logging_config_sees_one_line_on_stderr() -> None:
    done = run_script(FALLBACKS)
    assert done.stdout.split() == ["True", "True", "True"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "the openai optimizer fell back to the original prompt: backend_unavailable" in lines[0]


def test_the_standard_configuration_silences_it_or_shows_debug_lines() -> None:
    silenced = run_script(
        "import logging\nlogging.getLogger('bpo_integrations').setLevel(logging.ERROR)\n"
        + textwrap.dedent(FALLBACKS)
    )
    assert silenced.stderr == ""
    verbose = run_script(
        "import logging\nlogging.basicConfig(level=logging.DEBUG)\n" + textwrap.dedent(FALLBACKS)
    )
    ours = [line for line in verbose.stderr.splitlines() if ":bpo_integrations:" in line]
    assert [line.split(":")[0] for line in ours] == ["WARNING", "DEBUG", "DEBUG"]
