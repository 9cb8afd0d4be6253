"""Each benchmark runs end to end at tiny sizes (tiny Llama, 2 prompts), so that none of them rots.

The figures themselves are not asserted here (they depend on the machine); what is asserted is that
every benchmark measures what it says, on real parts, and that ``python -m benchmarks`` writes the
report. The full-size run is ``python -m benchmarks`` (see benchmarks/README.md).
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest

from benchmarks import cache, local_batching, memory, overhead, serve_soak, served, startup
from benchmarks._common import Section
from benchmarks.run import main

TINY = {"prompts": 2, "repeats": 1, "max_new_tokens": 4}


def figures(section: Section) -> dict[str, float]:
    values = {f.name: f.value for f in section.figures}
    assert values and all(math.isfinite(v) for v in values.values()), values
    assert section.title in section.to_markdown()
    return values


def test_overhead_measures_all_four_chains() -> None:
    section = overhead.run(calls=300, repeats=3)  # 1 run of 50 once put identity overhead <= 0
    values = figures(section)
    assert len(values) == 4
    markdown = section.to_markdown()
    assert r"`prompt \| bpo \| llm (instant async function)`" in markdown  # pipes escaped
    assert r"`prompt \| bpo \| llm (instant sync function)`" in markdown
    assert "Where the time goes" in markdown


def test_overhead_bpo_steps_really_rewrite() -> None:
    """The timed BPO steps put a changed prompt back (no shortcut for unchanged text helps)."""
    chains = overhead.build_chains()  # asserts the rewrite reaches the model's input
    for name in (overhead.BPO_SYNC, overhead.BPO_ASYNC):
        step = chains[name].steps[1]
        value = chains[name].steps[0].invoke(overhead.QUESTION)
        assert step.invoke(value).messages[-1].content.endswith(overhead.SUFFIX)
    identity = chains[overhead.IDENTITY].steps[1]
    assert identity.invoke("unchanged") == "unchanged"


def test_cache_proves_a_repeated_batch_makes_no_backend_call() -> None:
    section = cache.run(prompts=2, repeats=1, calls=5)
    values = figures(section)
    assert values["Backend calls made by a repeated batch (`optimize_batch`, LCEL `batch`)"] == 0
    assert values["Results of the repeated batch marked `cached`"] == 2
    assert values["Cache hit latency"] > 0


def test_local_batching_against_the_papers_loop(tiny_llama_dir: Path) -> None:
    section = local_batching.run(model=str(tiny_llama_dir), **TINY)
    assert figures(section)["Throughput, batched / paper's loop (2 prompts)"] > 0
    assert "up to 2 decoded together" in section.setup  # really batched by the engine


def test_memory_is_measured_in_a_fresh_process_without_torch(tiny_llama_dir: Path) -> None:
    section = memory.run(model=str(tiny_llama_dir), prompts=2, max_new_tokens=4)
    assert figures(section)["Peak RSS, local backend"] > 50  # MiB: python + OpenVINO at least
    peaks = [float(row[1].removesuffix(" MiB")) for row in section.rows]
    assert peaks == sorted(peaks) and len(peaks) == 5
    assert "torch imported by the process: False" in section.to_markdown()
    if sys.platform == "linux":  # the child's own peak, not this (torch-loaded) process's
        assert peaks[0] < 150, peaks
        engine = float(section.rows[-1][2].removesuffix(" MiB"))  # the engine's process too
        assert engine > 0
        assert figures(section)["Peak RSS, local backend"] == pytest.approx(
            peaks[-1] + engine, abs=1
        )


def test_cold_start_times_the_cli_as_a_new_process(tiny_llama_dir: Path) -> None:
    section = startup.run(model=str(tiny_llama_dir / "tiny.gguf"), repeats=1)
    assert figures(section)["Cold start, prepared model"] > 0.1


def test_served_runs_bpo_serve_and_the_tgi_backend(tiny_llama_dir: Path) -> None:
    section = served.run(model=str(tiny_llama_dir), **TINY)
    assert figures(section)["Throughput, 2 concurrent / sequential"] > 0


def test_soak_sends_every_kind_of_request_and_measures_the_server(tiny_llama_dir: Path) -> None:
    section = serve_soak.run(
        model=str(tiny_llama_dir), clients=4, seconds=3, settle=0.5, warm_up_rounds=2
    )
    values = figures(section)
    assert values["Peak RSS during the soak"] > 50  # MiB of the server process, not of this one
    assert values["`/health` latency p99 while 1 MB requests are handled"] > 0
    health = next(note for note in section.notes if note.startswith("`/health` from its own"))
    assert int(health.split(": ")[1].split(" requests")[0]) >= 10  # the prober ran the whole soak
    answered = {row[0].rsplit(": ", 1)[0] for row in section.rows}
    assert answered == {probe.name for probe in serve_soak.request_mix("x")}
    statuses = {row[0] for row in section.rows}
    assert "broken JSON: 422" in statuses or "broken JSON: 400" in statuses, statuses


def test_the_command_writes_the_report(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    args = ["--only", "cache", "--only", "overhead", "--calls", "5", "--repeats", "1"]
    main([*args, "--prompts", "2", "--output", str(output)])
    report = output.read_text(encoding="utf-8")
    assert report.startswith("# Benchmarks")
    assert "| cores (usable) |" in report and "| python |" in report
    assert "## Summary" in report and "## Cache" in report and "## Middleware overhead" in report
    assert "--only cache --only overhead" in report  # the command that made it


def test_the_command_rejects_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompts", "0"])
    assert exit_info.value.code == 2
    assert "--prompts must be >= 1" in capsys.readouterr().err


def test_sync_api_runs_in_the_calling_thread() -> None:
    """The overhead fix: the sync API no longer hops to the background loop's thread."""
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import CallableBackend

    seen: list[str] = []

    async def rewrite(prompt: str) -> str:
        seen.append(threading.current_thread().name)
        return prompt + " In detail."

    optimizer = BPOOptimizer(CallableBackend(rewrite), cache_size=0)

    def call() -> None:
        assert optimizer.optimize("Why?").optimized == "Why? In detail."

    worker = threading.Thread(target=call, name="caller-thread")
    worker.start()
    worker.join()
    call()
    assert seen == ["caller-thread", threading.current_thread().name]
