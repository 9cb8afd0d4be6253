"""``bpo-train infer --engine ray`` in Ray's local mode: 1,000 prompts, killed mid-way, rerun.

Each Ray worker runs the in-process backend on a tiny random Llama (``--ray_worker_engine
backend``); only the driver writes the output file, so after a SIGKILL and a rerun every id is in
it exactly once. Needs ``ray[data]``: ``make test-vllm`` installs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from bpo_integrations.jsonl import read_jsonl

pytestmark = pytest.mark.vllm
PROMPTS = 1000
BPO_TRAIN = (
    "import sys; from bpo_trainer.cli import main; sys.argv[0] = 'bpo-train'; sys.exit(main())"
)


def _infer(dataset: Path, output: Path, model: Path) -> subprocess.Popen[str]:
    args = [
        "infer", "--engine", "ray", "--ray_worker_engine", "backend", "--ray_workers", "2",
        "--backend", "local", "--model", str(model), "--dataset", str(dataset),
        "--output_file", str(output), "--mode", "greedy", "--max_new_tokens", "4",
        "--batch_size", "20", "--progress", "false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", BPO_TRAIN, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_killed_ray_run_resumes_with_every_id_exactly_once(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    dataset = tmp_path / "prompts.jsonl"
    with dataset.open("w") as out:
        for i in range(PROMPTS):
            out.write(json.dumps({"id": f"p{i:04d}", "instruction": f"Explain topic {i}."}) + "\n")
    output = tmp_path / "out.jsonl"

    started = time.monotonic()
    first = _infer(dataset, output, tiny_llama_dir)
    deadline = time.monotonic() + 600
    while _lines(output) < 200 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, f"the run ended before it was killed:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    first.wait()
    killed_at = _lines(output)
    assert 200 <= killed_at < PROMPTS, killed_at

    second = _infer(dataset, output, tiny_llama_dir)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    ids = [record["id"] for record in read_jsonl(output, allow_truncated_tail=False)]
    assert len(ids) == len(set(ids)) == PROMPTS, (len(ids), len(set(ids)))
    assert set(ids) == {f"p{i:04d}" for i in range(PROMPTS)}
    print(
        f"killed after {killed_at} records; {PROMPTS} ids once each in {time.monotonic() - started:.0f} s"
    )
