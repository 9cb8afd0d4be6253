"""Peak memory (RSS) of the local backend with the default model, measured in a fresh process.

The local backend imports no torch: the process holds Python, OpenVINO GenAI and the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks._common import REPO, Figure, Section, load_prompts

# Runs in a child process so that nothing else this run loaded counts; the peak so far is read
# after each stage. On Linux, getrusage's ru_maxrss survives fork and exec (a child of a big
# process starts at its parent's peak), so the process's own high-water mark VmHWM is read there.
CHILD = r"""
import json, resource, sys
def peak(pid="self"):
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform != "darwin" else value / 1024 / 1024
model, prompts, max_new_tokens = json.loads(sys.argv[1])
stages = {}
engine = None
def stage(name):
    stages[name] = (peak(), peak(getattr(engine, "pid", None)))
import bpo_integrations
stage("python + bpo_integrations")
import openvino_genai
stage("+ openvino_genai imported")
from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.settings import GenerationSettings
backend = LocalBackend(model, max_batch_size=len(prompts)).load()
engine = backend.engine
stage("+ model loaded")
settings = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens)
backend.generate(prompts[:1], settings)
stage("+ 1 prompt generated")
backend.generate(prompts, settings)
stage(f"+ {len(prompts)} prompts generated (one batch)")
print(json.dumps({"stages": stages, "model": backend.resolved_model,
                  "dtype": backend.precision, "torch": "torch" in sys.modules}))
"""


def measure(model: str | None, prompts: list[str], max_new_tokens: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([model, prompts, max_new_tokens])],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the memory benchmark's child process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(*, model: str | None, prompts: int = 16, max_new_tokens: int = 64) -> Section:
    result = measure(model, load_prompts(prompts), max_new_tokens)
    stages: dict[str, list[float]] = result["stages"]  # type: ignore[assignment]
    peak = max(ours for ours, _ in stages.values()) + max(engine for _, engine in stages.values())
    section = Section(
        title="Memory",
        setup=(
            f"Peak resident memory of a fresh Python process running the local backend with "
            f"`{result['model']}` ({result['dtype']}), `max_new_tokens={max_new_tokens}`, read "
            "after each stage: the process's high-water mark (`VmHWM` on Linux, where "
            "`resource.getrusage`'s `ru_maxrss` would include the parent's peak, inherited "
            "across fork and exec; `ru_maxrss` elsewhere), of the process and of the engine's "
            "own process (Linux only). The figure adds the two peaks."
        ),
        header=("Stage", "Peak RSS so far, this process", "the engine's process"),
    )
    section.rows = [
        (stage, f"{ours:.0f} MiB", f"{engine:.0f} MiB" if engine else "—")
        for stage, (ours, engine) in stages.items()
    ]
    section.figures = [Figure("Peak RSS, local backend", peak, "MiB", "report", None)]
    section.notes.append(f"torch imported by the process: {result.get('torch')}")
    return section
