"""Stage ``infer``: optimize every prompt of a data set with a BPO model, resumably.

The paper's use is rewriting Alpaca's 52k instructions (``tatsu-lab/alpaca``) before generating new
responses for them. Each record's prompt field is rewritten; its context field (Alpaca's ``input``)
is passed along untouched. Results are appended to a JSONL file one record per prompt, so a crashed
or interrupted run started again skips the prompts already done and loses nothing.

Past one server, ``--engine vllm`` runs the batches on vLLM's offline engine in this process and
``--engine ray`` shards the data set over a Ray cluster (:mod:`bpo_trainer.engines`); the file,
the resuming and the fallback rules are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bpo_integrations import BPOOptimizer, GenerationSettings, OptimizationResult
from bpo_integrations.backends import Backend, BackendConfigError, create
from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION, Precision
from bpo_integrations.jsonl import JsonlWriter, finished_keys
from bpo_trainer.engines.options import EngineOptions
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.sources import load_records

logger = logging.getLogger(__name__)


@dataclass
class InferConfig(EngineOptions):
    """Config of the ``infer`` stage.

    Example:
        >>> from bpo_trainer.infer import InferConfig
        >>> config = InferConfig(dataset="alpaca.json", output_file="alpaca_bpo.jsonl",
        ...                      backend="tgi", endpoint="http://localhost:8080")
        >>> config.prompt_field, config.context_field
        ('instruction', 'input')
    """

    dataset: str = field(
        default="tatsu-lab/alpaca",
        metadata={"help": "Prompts to optimize: a .jsonl/.json file or a Hub data set id."},
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub data set."})
    prompt_field: str = field(
        default="instruction", metadata={"help": "Field holding the prompt to rewrite."}
    )
    context_field: str | None = field(
        default="input",
        metadata={"help": "Field passed along unchanged (never rewritten); '' for none."},
    )
    id_field: str | None = field(
        default=None,
        metadata={
            "help": "Field with a unique id per record, the key for resuming; unset: the 'id' "
            "field if records have one, else the record's position in the data set."
        },
    )
    output_file: str = field(
        default="outputs/alpaca_bpo.jsonl",
        metadata={"help": "JSONL file the results are appended to (and resumed from)."},
    )
    backend: Literal["local", "tgi", "openai"] = field(
        default="local",
        metadata={
            "help": "Where the BPO model runs: in-process transformers ('local'), a TGI server, "
            "or an OpenAI-compatible server (vLLM, SGLang: --endpoint .../v1)."
        },
    )
    model: str = field(
        default="THUDM/BPO",
        metadata={
            "help": "local, vllm: model folder or Hub id; openai: the served model's or LoRA "
            "module's name; tgi: unused."
        },
    )
    adapter: str | None = field(
        default=None,
        metadata={"help": "local, vllm: a LoRA adapter folder applied on top of model."},
    )
    endpoint: str | None = field(
        default=None,
        metadata={"help": "tgi: the server URL; openai: the base URL (e.g. http://host:8000/v1)."},
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "tgi/openai: the token (default: $HF_TOKEN / $OPENAI_API_KEY)."},
    )
    precision: Precision = field(
        default=DEFAULT_PRECISION, metadata={"help": "local: how the engine stores the weights."}
    )
    template: Literal["auto", "bpo", "chat"] = field(
        default="auto",
        metadata={"help": "local: raw BPO template ('bpo') or the tokenizer's chat template."},
    )
    mode: Literal["stable", "aggressive", "greedy"] = field(
        default="stable", metadata={"help": "Decoding preset of the reference implementation."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Longest rewrite, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed, for repeatability."})
    iterations: int = field(default=1, metadata={"help": "Rounds of re-optimization."})
    batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per optimizer call (and per model.generate batch for local)."},
    )
    max_concurrency: int = field(
        default=4, metadata={"help": "Backend calls in flight at once (tgi/openai)."}
    )
    timeout: float | None = field(
        default=None, metadata={"help": "Seconds allowed for one batch; unset: no limit."}
    )
    on_error: Literal["fallback", "raise"] = field(
        default="fallback",
        metadata={
            "help": "'fallback': a rewrite the guards reject keeps the original prompt, flagged "
            "fell_back; 'raise': stop at the first failure (finished prompts are kept)."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Optimize only the first N records."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise TrainerConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.validate_engine()
        if self.backend == "tgi" and not self.endpoint:
            raise TrainerConfigError(
                "backend 'tgi' needs --endpoint, the server's URL (e.g. http://localhost:8080)"
            )
        if self.context_field == "":
            self.context_field = None


@dataclass(frozen=True)
class InferSummary:
    """What one :func:`run_infer` call did."""

    output_file: Path
    total: int
    already_done: int
    written: int
    fell_back: int
    retry_later: int


def make_backend(config: InferConfig) -> Backend:
    """The backend ``config`` names (the vLLM engine for ``engine="vllm"``)."""
    if config.engine == "vllm":
        from bpo_trainer.engines.vllm import VLLMEngineBackend

        return VLLMEngineBackend(
            config.model,
            adapter=config.adapter,
            dtype=config.dtype or "auto",
            max_model_len=config.vllm_max_model_len,
            max_batch_size=config.batch_size,
            engine_kwargs={"enforce_eager": True} if config.vllm_enforce_eager else None,
        )
    try:
        return create(
            config.backend,
            endpoint=config.endpoint,
            model=None if config.backend == "tgi" else config.model,  # tgi serves its own
            adapter=config.adapter,
            precision=config.precision if config.backend == "local" else None,
            template=config.template if config.backend == "local" else None,
            max_batch_size=config.batch_size if config.backend == "local" else None,
            api_key=config.api_key,
        )
    except BackendConfigError as error:
        raise TrainerConfigError(str(error)) from error


def _keyed_records(config: InferConfig) -> tuple[str, list[tuple[Any, dict[str, Any]]]]:
    records = load_records(config.dataset, split=config.split)
    if config.max_samples is not None:
        records = records[: config.max_samples]
    if not records:
        raise TrainerConfigError(f"{config.dataset} has no records")
    id_field = config.id_field
    if id_field is None and "id" in records[0]:
        id_field = "id"
    keyed: list[tuple[Any, dict[str, Any]]] = []
    seen: set[Any] = set()
    for index, record in enumerate(records):
        if config.prompt_field not in record:
            raise TrainerConfigError(
                f"{config.dataset}: record {index} has no field {config.prompt_field!r} (it has "
                f"{sorted(record)}); name the prompt with --prompt_field"
            )
        if id_field is None:
            key: Any = index
        elif id_field not in record:
            raise TrainerConfigError(
                f"{config.dataset}: record {index} has no id field {id_field!r}; pass --id_field"
            )
        else:
            key = record[id_field]
        if key in seen:
            raise TrainerConfigError(
                f"{config.dataset}: id {key!r} occurs twice, so a resumed run could not tell the "
                "records apart; pass an --id_field whose values are unique"
            )
        seen.add(key)
        keyed.append((key, record))
    return id_field or "id", keyed


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def worker_backend(config: InferConfig) -> Backend:
    """What one Ray worker optimizes with: a vLLM engine, or the configured backend."""
    engine = "vllm" if config.ray_worker_engine == "vllm" else "backend"
    return make_backend(replace(config, engine=engine))


def build_optimizer(config: InferConfig, backend: Backend) -> BPOOptimizer:
    """The optimizer ``config`` describes, over ``backend``."""
    settings = GenerationSettings.for_mode(
        config.mode, max_new_tokens=config.max_new_tokens, seed=config.seed
    )
    return BPOOptimizer(
        backend,
        settings=settings,
        iterations=config.iterations,
        timeout=config.timeout,
        on_error=config.on_error,
        max_concurrency=config.max_concurrency,
        cache_size=0,
    )


@dataclass(frozen=True)
class OptimizedRecord:
    """One optimized prompt of a data set, from whichever engine: its key, its input record and
    the optimizer's result."""

    key: Any
    record: dict[str, Any]
    result: OptimizationResult

    @property
    def worth_retrying(self) -> bool:
        """The backend failed: the prompt is not written, and the next run tries it again."""
        reason = self.result.fallback_reason
        return self.result.fell_back and reason is not None and reason.is_backend_failure


def _output_record(key_name: str, done: OptimizedRecord) -> dict[str, Any]:
    return {
        **done.record,
        key_name: done.key,
        "optimized_prompt": done.result.optimized,
        "fell_back": done.result.fell_back,
        "fallback_reason": done.result.fallback_message,
    }


def optimized_batches(
    config: InferConfig, pending: Sequence[tuple[Any, dict[str, Any]]], backend: Backend | None
) -> Iterator[list[OptimizedRecord]]:
    """The ``(key, record)`` items of ``pending`` optimized, batch by batch, by the engine
    ``config`` names (``backend`` replaces the configured one; not with ``engine="ray"``)."""
    if config.engine == "ray":
        if backend is not None:
            raise TrainerConfigError(
                "engine='ray' builds one backend per worker from the config: pass no backend"
            )
        from bpo_trainer.engines.ray import key_json, optimize_on_ray

        by_key = {key_json(key): (key, record) for key, record in pending}
        items = [
            (key_json(key), str(record[config.prompt_field] or ""), _context(config, record))
            for key, record in pending
        ]
        for rows in optimize_on_ray(config, items):
            yield [OptimizedRecord(*by_key[key], result) for key, result in rows]
        return
    own_backend = backend is None
    optimizer = build_optimizer(config, backend or make_backend(config))
    try:
        for batch in _batches(pending, config.batch_size):
            prompts = [str(record[config.prompt_field] or "") for _, record in batch]
            contexts = [_context(config, record) for _, record in batch]
            results = optimizer.optimize_batch(prompts, contexts=contexts)
            yield [
                OptimizedRecord(key, record, result)
                for (key, record), result in zip(batch, results, strict=True)
            ]
    finally:
        if own_backend:
            optimizer.close()


def run_infer(config: InferConfig, *, backend: Backend | None = None) -> InferSummary:
    """Optimize the prompts of ``config.dataset`` not yet in ``config.output_file``.

    Each output record is the input record plus ``optimized_prompt``, ``fell_back`` and
    ``fallback_reason`` (and the id field). Prompts that failed for backend reasons (down,
    overloaded, timed out) are not written, so the next run retries them; prompts whose rewrite was
    rejected are written with ``fell_back: true`` and the original prompt. Pass ``backend`` to use
    one built in code instead of the one ``config`` names.

    Example:
        >>> from bpo_integrations.backends import CallableBackend
        >>> from bpo_trainer.infer import InferConfig, run_infer
        >>> run_infer(InferConfig(dataset="alpaca.json", output_file="out.jsonl"),
        ...           backend=CallableBackend(str.upper))  # doctest: +SKIP
        InferSummary(output_file=PosixPath('out.jsonl'), total=3, already_done=0, written=3, ...)
    """
    key_name, keyed = _keyed_records(config)
    output = Path(config.output_file)
    done = finished_keys(output, key_name)
    pending = [(key, record) for key, record in keyed if key not in done]
    already = len(keyed) - len(pending)
    if already:
        logger.info("%s: %d of %d prompts already done", output, already, len(keyed))
    written = fell_back = retry = 0
    if not pending:
        return InferSummary(output, len(keyed), already, 0, 0, 0)

    where = config.engine if config.engine != "backend" else f"{config.backend} backend"
    batches = optimized_batches(config, pending, backend)
    bar = _progress(config, total=len(keyed), initial=already)
    try:
        with JsonlWriter(output) as writer:
            for batch in batches:
                failed = []
                for done in batch:
                    if done.worth_retrying:
                        failed.append(done.result.fallback_message)
                        continue
                    writer.write(_output_record(key_name, done))
                    written += 1
                    fell_back += done.result.fell_back
                retry += len(failed)
                if bar is not None:
                    bar.update(len(batch))
                if failed and len(failed) == len(batch):
                    raise StageFailedError(
                        f"every prompt of a batch failed ({failed[0]}); fix the {where} and run "
                        f"again: the {already + written} finished prompts in {output} are kept"
                    )
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    if retry:
        logger.warning("%d prompts failed for backend reasons; run again to retry them", retry)
    return InferSummary(output, len(keyed), already, written, fell_back, retry)


def _context(config: InferConfig, record: dict[str, Any]) -> str | None:
    if config.context_field is None:
        return None
    value = record.get(config.context_field)
    return str(value) if value else None


def _progress(config: InferConfig, *, total: int, initial: int) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="bpo infer", unit="prompt")
