"""The engine in a child process: same tokens as in-process, and never a hang when the child goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("openvino_genai")

from bpo_integrations.inference.engine import EngineClosedError, SamplingParams
from bpo_integrations.inference.engine_process import EngineProcess
from bpo_integrations.inference.openvino import OpenVINOEngine
from bpo_integrations.inference.prepare import prepare_model

PROMPTS = ["Tell me about Harry Potter", "Why is the sky blue?", "Write a haiku about rain"]


@pytest.fixture(scope="module")
def model_path(tiny_llama_dir: Path) -> Path:
    return prepare_model(str(tiny_llama_dir / "tiny.gguf")).path


@pytest.fixture
def engine(model_path: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess(model_path, max_batch_size=4)
    yield engine
    engine.close()


def test_the_child_decodes_the_same_tokens_as_the_engine_in_this_process(
    engine: EngineProcess, model_path: Path
) -> None:
    local = OpenVINOEngine(model_path, max_batch_size=4)
    try:
        params = SamplingParams(12, min_new_tokens=12)
        expected = [local.submit(local.encode(p), params).result().token_ids for p in PROMPTS]
        requests = [engine.submit(engine.encode(p), params) for p in PROMPTS]
        assert [r.result(timeout=60).token_ids for r in requests] == expected
        assert engine.eos_token_ids == local.eos_token_ids
        assert engine.max_token_bytes == local.max_token_bytes > 1
    finally:
        local.close()
    assert engine.stats["requests"] == len(PROMPTS)
    assert engine.stats["generated_tokens"] == 12 * len(PROMPTS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_the_model_weights_live_in_the_child_only(engine: EngineProcess, model_path: Path) -> None:
    assert engine._process.pid != os.getpid()
    weights = str(model_path / "openvino_model.bin")
    assert weights in Path(f"/proc/{engine._process.pid}/maps").read_text()
    assert weights not in Path("/proc/self/maps").read_text()


def test_a_child_that_dies_fails_its_requests_instead_of_hanging(engine: EngineProcess) -> None:
    request = engine.submit(engine.encode("Hi"), SamplingParams(4000, min_new_tokens=4000))
    next(request.steps(timeout=60))  # it runs
    engine._process.kill()
    with pytest.raises(EngineClosedError, match="exited unexpectedly"):
        request.result(timeout=60)
    with pytest.raises(EngineClosedError):
        engine.submit(engine.encode("Hi"), SamplingParams(4))


def test_close_ends_the_child_and_fails_what_still_runs(model_path: Path) -> None:
    engine = EngineProcess(model_path)
    request = engine.submit(engine.encode("Hi"), SamplingParams(4000, min_new_tokens=4000))
    next(request.steps(timeout=60))
    engine.close()
    assert engine._process.poll() is not None
    with pytest.raises(EngineClosedError, match="closed"):
        request.result(timeout=5)


def test_close_gives_back_the_kv_cache_of_what_still_runs(
    model_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """OpenVINO GenAI reports leaked blocks (on the child's stderr, which is the user's terminal)
    when a pipeline is destroyed with requests in it, as after Ctrl-C in a file job."""
    engine = EngineProcess(model_path, max_batch_size=4)
    requests = [
        engine.submit(engine.encode(p), SamplingParams(4000, min_new_tokens=4000)) for p in PROMPTS
    ]
    for request in requests:
        next(request.steps(timeout=60))
    engine.close()
    assert engine._process.returncode == 0
    assert "leaked" not in capfd.readouterr().err


def test_ctrl_c_is_left_to_the_parent(engine: EngineProcess) -> None:
    """Ctrl-C reaches the child too (one process group): it neither dies nor prints a traceback;
    the parent decides, and closes it."""
    engine._process.send_signal(signal.SIGINT)
    completion = engine.submit(engine.encode("Hi"), SamplingParams(4, min_new_tokens=4)).result(60)
    assert len(completion.token_ids) == 4
    assert engine._process.poll() is None


def test_a_model_that_does_not_load_raises_its_error(tmp_path: Path) -> None:
    (tmp_path / "openvino_model.xml").write_text("not a model")
    with pytest.raises(RuntimeError):
        EngineProcess(tmp_path)


FIRST_ENCODE_AT_ONCE = """
import sys, threading
from bpo_integrations.inference.openvino import OpenVINOTokenizer

tokenizer = OpenVINOTokenizer(sys.argv[1])
start = threading.Barrier(4)

def encode():
    start.wait()
    tokenizer._tokenizer.encode("How do vaccines work?").input_ids.data  # no lock of ours

threads = [threading.Thread(target=encode) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_threads_that_tokenize_at_once_in_a_fresh_process_never_deadlock(model_path: Path) -> None:
    """The first tensor-to-NumPy conversion of a process deadlocks when two threads make it at once
    (it hung fresh ``bpo serve`` processes on their first concurrent requests); the tokenizer makes
    it when it is built. Without that, some of these processes hang."""

    def run() -> int:
        command = [sys.executable, "-c", FIRST_ENCODE_AT_ONCE, str(model_path)]
        try:
            return subprocess.run(command, timeout=60, capture_output=True).returncode
        except subprocess.TimeoutExpired:
            return -1

    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda _: run(), range(12)))
    assert codes == [0] * 12, f"{codes.count(-1)} of 12 processes hung"


def test_a_request_cancelled_at_any_point_finishes_with_what_it_made(model_path: Path) -> None:
    engine = OpenVINOEngine(model_path, max_batch_size=4)
    try:
        ids = engine.encode("Tell me about Harry Potter")
        params = SamplingParams(500, min_new_tokens=500)
        before_start = engine.submit(ids, params)
        before_start.cancel()
        after_a_token = engine.submit(ids, params)
        next(iter(after_a_token.steps(timeout=60)))
        after_a_token.cancel()
        alone = engine.submit(ids, params)
        next(iter(alone.steps(timeout=60)))
        alone.cancel()
        for request in (before_start, after_a_token, alone):
            completion = request.result(timeout=60)  # no error: the tokens made so far
            assert len(completion.token_ids) < 500
        assert engine.submit(ids, SamplingParams(4)).result(timeout=60).finish_reason == "length"
    finally:
        engine.close()
