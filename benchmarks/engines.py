"""Engines: the in-process optimizer on each CPU inference engine, side by side.

The same weights (the default optimizer: SmolLM2-135M-Instruct with the shipped BPO adapter,
merged), the same BPO-templated prompts, greedy decoding; each engine and precision runs in a
fresh process of its own (so that its memory and threads are its own), one after the other:

- ``bpo-integrations`` (what ``LocalBackend`` runs): OpenVINO GenAI's continuous batching on the
  model :func:`~bpo_integrations.inference.prepare.prepare_model` prepares;
- ``transformers``: ``model.generate`` in float32, what one writes without an engine;
- ``onnxruntime-genai``: its model builder's export (fp32, int8, int4) on its ``Engine``;
- ``ctranslate2``: its converter's export (float32, int8) on ``Generator.generate_batch``.

llama.cpp is left out: ``llama-cpp-python`` builds from source (about 12 minutes here). Engines
that are not installed are skipped with a note (``pip install onnxruntime-genai ctranslate2``).
Figures per engine: milliseconds per token of one stream (a fixed number of new tokens forced),
16 prompts one at a time and batched (forced lengths), 16 batched at their natural lengths, the
load time, peak memory, and how many greedy rewrites equal the float32 transformers ones.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import Figure, Section, load_prompts, run_child
from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION

TARGET_TOKEN_RATIO = 1.5
TARGET_BATCH_RATIO = 1.5

CHILD = r"""
import json, statistics, sys, time
spec = json.loads(sys.argv[1])
from benchmarks.engines import measure_in_child
print("RESULT " + json.dumps(measure_in_child(spec)))
"""

VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("bpo-integrations (OpenVINO GenAI)", "f16", "openvino_genai"),
    ("bpo-integrations (OpenVINO GenAI)", "q8_0", "openvino_genai"),
    ("bpo-integrations (OpenVINO GenAI)", "q4_0", "openvino_genai"),
    ("transformers", "float32", "transformers"),
    ("onnxruntime-genai", "fp32", "onnxruntime_genai"),
    ("onnxruntime-genai", "int8", "onnxruntime_genai"),
    ("onnxruntime-genai", "int4", "onnxruntime_genai"),
    ("ctranslate2", "float32", "ctranslate2"),
    ("ctranslate2", "int8", "ctranslate2"),
)


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def merged_folder(work: Path) -> Path:
    """The default optimizer as one transformers folder (base + adapter, merged in float32)."""
    target = work / "merged"
    if (target / "config.json").is_file():
        return target
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bpo_integrations.models import default_adapter_path, ensure_default_model

    base = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    model = PeftModel.from_pretrained(model, str(default_adapter_path())).merge_and_unload()
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


# -- one engine, in its own process --------------------------------------------------------------


def measure_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    engine, precision = spec["engine"], spec["precision"]
    texts, tokens, repeats = spec["texts"], spec["tokens"], spec["repeats"]
    started = time.perf_counter()
    runner = _RUNNERS[engine](spec)
    load_s = time.perf_counter() - started
    runner.generate(texts[:1], tokens, forced=True)  # warm-up

    def timed(fn: Any) -> float:
        samples = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
        return sorted(samples)[len(samples) // 2]

    one = timed(lambda: runner.generate(texts[:1], tokens, forced=True))
    sequential = timed(lambda: [runner.generate([t], tokens, forced=True) for t in texts])
    batched = timed(lambda: runner.generate(texts, tokens, forced=True))
    natural = timed(lambda: runner.generate(texts, spec["natural_tokens"], forced=False))
    outputs = runner.generate(texts, spec["natural_tokens"], forced=False)
    return {
        "engine": engine,
        "precision": precision,
        "ms_per_token": one / tokens * 1000,
        "sequential_s": sequential,
        "batched_s": batched,
        "natural_s": natural,
        "load_s": load_s,
        "peak_mb": _peak_mb(),
        "outputs": outputs,
    }


class _OpenVINO:
    def __init__(self, spec: dict[str, Any]) -> None:
        from bpo_integrations.inference.openvino import OpenVINOEngine
        from bpo_integrations.inference.prepare import prepare_model

        prepared = prepare_model(precision=spec["precision"])
        self.engine = OpenVINOEngine(prepared.path, max_batch_size=len(spec["texts"]))

    def generate(self, texts: list[str], tokens: int, *, forced: bool) -> list[list[int]]:
        from bpo_integrations.inference.engine import SamplingParams

        params = SamplingParams(tokens, min_new_tokens=tokens if forced else 0)
        requests = [self.engine.submit(self.engine.encode(t), params) for t in texts]
        return [list(r.result().token_ids) for r in requests]


class _Transformers:
    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        folder = spec["merged"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def generate(self, texts: list[str], tokens: int, *, forced: bool) -> list[list[int]]:
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=tokens,
                min_new_tokens=tokens if forced else None,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        eos = self.tokenizer.eos_token_id
        rows = []
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            if eos in row:
                row = row[: row.index(eos) + 1]
            rows.append(row)
        return rows


class _OnnxGenAI:
    def __init__(self, spec: dict[str, Any]) -> None:
        import onnxruntime_genai as og

        folder = Path(spec["work"]) / f"ort-{spec['precision']}"
        if not (folder / "genai_config.json").is_file():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "onnxruntime_genai.models.builder",
                    "-i",
                    spec["merged"],
                    "-o",
                    str(folder),
                    "-p",
                    spec["precision"],
                    "-e",
                    "cpu",
                    "-c",
                    str(Path(spec["work"]) / "ort-cache"),
                ],
                check=True,
                capture_output=True,
            )
        self.og = og
        config = og.Config(str(folder))
        batch = len(spec["texts"])
        config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": batch}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.engine = og.Engine(self.model)
        self.buffer = self.engine.create_event_buffer(256)

    def generate(self, texts: list[str], tokens: int, *, forced: bool) -> list[list[int]]:
        import numpy as np

        og = self.og
        outputs: dict[int, list[int]] = {}
        order = []
        for text in texts:
            request = self.engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(tokens)
            options.set_do_sample(False)
            if forced:
                options.set_min_generated_tokens(tokens)
            request.begin_turn(np.asarray(self.tokenizer.encode(text), dtype=np.int32), options)
            order.append(request)
            outputs[id(request)] = []
        by_identity = {id(r): r for r in order}
        while self.engine.has_pending_requests():
            self.engine.run(self.buffer)
            for index in range(len(self.buffer)):
                event = self.buffer[index]
                if event.flags.value & og.EngineEventFlags.TOKEN.value:
                    for key, request in by_identity.items():
                        if request == event.request:
                            outputs[key].append(int(event.token))
                            break
        return [outputs[id(r)] for r in order]


class _CTranslate2:
    def __init__(self, spec: dict[str, Any]) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        folder = Path(spec["work"]) / f"ct2-{spec['precision']}"
        if not (folder / "model.bin").is_file():
            converter = ctranslate2.converters.TransformersConverter(spec["merged"])
            converter.convert(str(folder), quantization=spec["precision"], force=True)
        self.tokenizer = AutoTokenizer.from_pretrained(spec["merged"])
        self.generator = ctranslate2.Generator(
            str(folder), device="cpu", compute_type=spec["precision"]
        )

    def generate(self, texts: list[str], tokens: int, *, forced: bool) -> list[list[int]]:
        batch = [
            self.tokenizer.convert_ids_to_tokens(self.tokenizer.encode(t, add_special_tokens=False))
            for t in texts
        ]
        results = self.generator.generate_batch(
            batch,
            max_length=tokens,
            min_length=tokens if forced else 0,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=self.tokenizer.eos_token,
        )
        return [list(r.sequences_ids[0]) for r in results]


_RUNNERS = {
    "bpo-integrations (OpenVINO GenAI)": _OpenVINO,
    "transformers": _Transformers,
    "onnxruntime-genai": _OnnxGenAI,
    "ctranslate2": _CTranslate2,
}


# -- the benchmark -------------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_child(CHILD, spec)
    return result


def _same(rows: list[list[int]], reference: list[list[int]]) -> int:
    """Rewrites equal to the reference's, an eos at the end aside."""

    def strip(row: list[int]) -> list[int]:
        return row[:-1] if row and row[-1] == 2 else row

    return sum(strip(a) == strip(b) for a, b in zip(rows, reference, strict=True))


def run(
    *,
    model: str | None = None,
    prompts: int = 16,
    repeats: int = 3,
    max_new_tokens: int = 64,
    natural_tokens: int = 256,
    work: Path | None = None,
) -> Section:
    from bpo_integrations.template import format_bpo_prompt

    if model is not None:
        raise ValueError("the engine comparison runs the default optimizer only")
    work = work or Path(tempfile.mkdtemp(prefix="bpo-engines-"))
    merged = merged_folder(work)
    texts = [format_bpo_prompt(p) for p in load_prompts(prompts)]
    base = {
        "texts": texts,
        "tokens": max_new_tokens,
        "natural_tokens": natural_tokens,
        "repeats": repeats,
        "merged": str(merged),
        "work": str(work),
    }
    results: list[dict[str, Any]] = []
    notes = []
    for engine, precision, module in VARIANTS:
        if module is not None and importlib.util.find_spec(module) is None:
            package = module.replace("_", "-")
            notes.append(f"{engine} not installed: skipped (`pip install {package}`)")
            continue
        print(f"  {engine} {precision} ...", file=sys.stderr, flush=True)
        try:
            results.append(_child({**base, "engine": engine, "precision": precision}))
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            notes.append(f"{engine} {precision} failed: {error}")
    reference = next(
        (r["outputs"] for r in results if r["engine"] == "transformers"), results[0]["outputs"]
    )
    rows = [
        (
            f"{r['engine']}, {r['precision']}",
            f"{r['ms_per_token']:.1f}",
            f"{r['sequential_s']:.2f} s",
            f"{r['batched_s']:.2f} s",
            f"{r['natural_s']:.2f} s",
            f"{r['load_s']:.1f} s",
            f"{r['peak_mb']:.0f} MB",
            f"{_same(r['outputs'], reference)}/{len(texts)}",
        )
        for r in results
    ]
    ours = [r for r in results if r["engine"].startswith("bpo-integrations")]
    shipped = next(
        (r for r in ours if r["precision"] == DEFAULT_PRECISION), ours[0] if ours else None
    )
    figures = []
    if shipped is not None:
        fastest_token = min(r["ms_per_token"] for r in results)
        fastest_natural = min(r["natural_s"] for r in results)
        token_ratio = shipped["ms_per_token"] / fastest_token
        natural_ratio = shipped["natural_s"] / fastest_natural
        batch_ratio = shipped["sequential_s"] / shipped["batched_s"]
        figures = [
            Figure(
                f"ms/token, one stream: shipped ({DEFAULT_PRECISION}) / fastest engine",
                token_ratio,
                "x",
                f"<= {TARGET_TOKEN_RATIO}x",
                token_ratio <= TARGET_TOKEN_RATIO,
            ),
            Figure(
                f"{len(texts)} batched, natural lengths: shipped / fastest engine",
                natural_ratio,
                "x",
                f"<= {TARGET_BATCH_RATIO}x",
                natural_ratio <= TARGET_BATCH_RATIO,
            ),
            Figure(
                f"{len(texts)} one at a time / batched, shipped engine",
                batch_ratio,
                "x",
                "n/a",
                None,
            ),
        ]
    return Section(
        title="Engines: the default optimizer on each CPU inference engine",
        setup=(
            f"The default optimizer merged into one set of weights; {len(texts)} real BPO prompts "
            f"in the BPO template; greedy; {max_new_tokens} new tokens forced for the timings "
            f"(natural lengths up to {natural_tokens} in the last timing column); each engine in "
            f"a fresh process, one after the other; medians of {repeats}. 'Same' counts natural "
            "greedy rewrites equal to transformers' float32 ones."
        ),
        figures=figures,
        header=(
            "engine, precision",
            "ms/token, one stream",
            f"{len(texts)} one at a time",
            f"{len(texts)} batched",
            f"{len(texts)} batched, natural",
            "load",
            "peak RSS",
            "same as float32",
        ),
        rows=rows,
        notes=notes,
    )
