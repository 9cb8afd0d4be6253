"""The optimizer model in-process, with transformers: no server to run.

Calls from many threads and coroutines are gathered into shared ``model.generate`` batches by a
micro-batcher; one worker thread owns the model and the tokenizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bpo_integrations.backends._sampling import NucleusSampler
from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import BackendError, OptimizationTimeoutError
from bpo_integrations.models import DEFAULT_MODEL_HUB_ID
from bpo_integrations.settings import Generation, GenerationSettings
from bpo_integrations.template import BPO_TEMPLATE, format_bpo_message, format_bpo_prompt

if TYPE_CHECKING:
    import torch

TemplateKind = Literal["auto", "bpo", "chat"]
FinishReason = Literal["eos_token", "stop_sequence", "length", "unknown"]
T = TypeVar("T")

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_INSTALL_HINT = "pip install 'bpo-integrations[local]'"
_MIN_SHARED_PREFIX = 4
_HUB_ID = re.compile(r"[\w.-]+(?:/[\w.-]+)?")


@dataclass(eq=False)
class _Request:
    """One caller's rows, waiting for the worker. ``results`` fills in as its chunks finish."""

    texts: list[str]
    settings: GenerationSettings
    prompts: list[str] | None
    min_new_tokens: list[int] | None
    key: Hashable
    future: concurrent.futures.Future[list[Generation]] = field(
        default_factory=concurrent.futures.Future
    )
    results: list[Generation | None] = field(default_factory=list)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.texts)


@dataclass(eq=False)
class _Call:
    """A function to run on the worker thread, between batches (see ``run_in_worker``)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class LocalBackend(Backend):
    """Runs a BPO model in this process with transformers (the ``local`` extra).

    Args:
        model: a hub id (``"THUDM/BPO"``), a local model folder, or a LoRA adapter folder (one
            with ``adapter_config.json``: its base model is loaded and the adapter merged in).
            ``None``: the default optimizer, SmolLM2-135M-Instruct with the BPO LoRA adapter
            shipped in the package (see :mod:`bpo_integrations.models`).
        adapter: a LoRA adapter folder or hub id to apply on top of ``model``.
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``; ``None`` picks the best available.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``; ``None``: bf16 (or fp16) on CUDA,
            fp16 on MPS, float32 on CPU.
        max_batch_size: the most rows in one ``model.generate`` call.
        batch_wait_ms: how long the worker waits for more calls to join a batch.
        prompt_lookup: use prompt-lookup decoding for single-prompt greedy calls (transformers
            supports it only at batch size 1). BPO rewrites copy much of their input, which is
            what it speeds up: 1.8–2.1x with identical outputs on the embedded default model (see
            BENCHMARKS.md); on a model that answers instead of rewriting it can be slower.
        prompt_lookup_tokens: candidate tokens per prompt-lookup step.
        segment_tokens: a batch of several rows (or one sampled row) generates this many new
            tokens at a time; after each segment the rows that finished (eos, a stop string, a
            caller that gave up) leave the batch and the rest continue from the KV cache, so a
            batch costs what its running rows cost rather than running every row to the longest
            one. A call that arrives while a batch with room runs ends the segment after the
            current token; if its settings are the same it joins the batch (up to
            ``max_batch_size`` rows): its prompts are prefilled and merged into the cache.
        template: how a user prompt becomes the model's input. ``"bpo"``: the raw BPO template
            ``[INST] ... [/INST]`` (what ``THUDM/BPO`` was trained on); ``"chat"``: the
            tokenizer's chat template around :func:`~bpo_integrations.template.format_bpo_message`;
            ``"auto"``: ``"bpo"`` for a model or adapter that ``bpo-train`` trained on the raw
            template (its ``bpo_training.json`` says so: the shipped default does), else
            ``"chat"`` when the tokenizer has a chat template, else ``"bpo"``. (For a Llama-2
            chat template both give the same tokens.)
        trust_remote_code: passed to ``from_pretrained``.

    The server API (stable): :meth:`generate_raw` / :meth:`agenerate_raw` take fully templated
    inputs, :meth:`load` loads eagerly, :attr:`model`, :attr:`tokenizer` and :attr:`device`
    load on access, :meth:`count_tokens` is safe from any thread, :attr:`stats` counts batches.

    Each :class:`Generation` has ``finish_reason`` (``"eos_token"``, ``"stop_sequence"`` or
    ``"length"``), ``generated_tokens`` (the eos included) and ``extra`` with ``prompt_tokens``
    and ``token_ids``. A stop string is cut off the text. Calls with equal settings share
    batches; a seeded sampling call runs alone, so that its seed reproduces its output.

    Example:
        >>> import tempfile
        >>> from bpo_integrations.testing.tiny_models import build_tiny_llama
        >>> backend = LocalBackend(build_tiny_llama(tempfile.mkdtemp()), device="cpu")
        >>> greedy = GenerationSettings.for_mode("greedy", max_new_tokens=5)
        >>> [g.finish_reason for g in backend.generate(["Why is the sky blue?", "Hi"], greedy)]
        ['length', 'length']
        >>> backend.close()

        With the paper's model (needs the hub or a local copy, and a GPU to be fast):

        >>> from bpo_integrations import BPOOptimizer
        >>> optimizer = BPOOptimizer(LocalBackend("THUDM/BPO"))  # doctest: +SKIP
        >>> optimizer.optimize("Tell me about Harry Potter").optimized  # doctest: +SKIP
    """

    name = "local"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        adapter: str | os.PathLike[str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        prompt_lookup: bool = True,
        prompt_lookup_tokens: int = 10,
        segment_tokens: int = 8,
        template: TemplateKind = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        if prompt_lookup_tokens < 1:
            raise ValueError(f"prompt_lookup_tokens must be >= 1, got {prompt_lookup_tokens}")
        if segment_tokens < 1:
            raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
        if dtype is not None and dtype != "auto" and dtype not in _DTYPES:
            choices = ", ".join(sorted(set(_DTYPES.values())))
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {choices}, or None (auto)")
        if template not in ("auto", "bpo", "chat"):
            raise ValueError(f"template must be 'auto', 'bpo' or 'chat', got {template!r}")
        self.model_id = None if model is None else str(model)
        self.adapter_id = None if adapter is None else str(adapter)
        self.requested_device = device
        self.requested_dtype = None if dtype == "auto" else dtype
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = batch_wait_ms
        self.prompt_lookup = prompt_lookup
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.segment_tokens = segment_tokens
        self.template = template
        self.trust_remote_code = trust_remote_code

        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue[_Request | _Call | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: torch.device | None = None
        self._template_kind: Literal["bpo", "chat"] | None = None
        self._bad_words_cache: dict[tuple[str, ...], list[list[int]]] = {}
        # worker-thread only: its inbox, and requests it took out early but could not run yet
        self._inbox: queue.Queue[_Request | _Call | None] = self._queue
        self._pending: deque[_Request | _Call | None] = deque()
        self._stats = {
            "batches": 0,
            "rows": 0,
            "requests": 0,
            "max_batch_rows": 0,
            "segments": 0,
            "row_steps": 0,
            "joined_rows": 0,
            "prefix_tokens_reused": 0,
        }
        self.resolved_model: str | None = None
        self.resolved_adapter: str | None = None

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model_id!r}, adapter={self.adapter_id!r})"

    # -- loading --------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> LocalBackend:
        """Load the model and tokenizer now (thread-safe; only the first call loads)."""
        if self._model is not None:
            return self
        with self._load_lock:
            if self._model is None:
                self._load()
        return self

    @property
    def model(self) -> Any:
        """The transformers model (loads it on first access)."""
        return self.load()._model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (pad token set, left padding); from threads use :meth:`count_tokens`."""
        return self.load()._tokenizer

    @property
    def device(self) -> torch.device:
        """The torch device the model runs on (loads the model on first access)."""
        self.load()
        assert self._device is not None
        return self._device

    @property
    def template_kind(self) -> Literal["bpo", "chat"]:
        """The prompt format in use, ``"auto"`` resolved (loads the tokenizer)."""
        self.load()
        assert self._template_kind is not None
        return self._template_kind

    def _load(self) -> None:
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError as error:
            raise BackendError(
                f"the local backend needs torch and transformers ({error.name} is missing): "
                f"{_INSTALL_HINT}"
            ) from error

        base, adapter = self._resolve()
        device = _pick_device(torch, self.requested_device)
        dtype = _pick_dtype(torch, self.requested_dtype, device)
        # The worker thread loads the weights as well as running them: on CPU each thread that runs
        # torch gets its own OpenMP thread pool, and two pools on few cores throttle each other.
        loaded: concurrent.futures.Future[tuple[Any, Any]] = concurrent.futures.Future()
        worker = threading.Thread(
            target=self._work,
            args=(self._queue, loaded, (base, adapter, dtype, device)),
            name="bpo-local-backend",
            daemon=True,
        )
        worker.start()
        try:
            tokenizer, model = loaded.result()
            kind = self._prepare(tokenizer, model, base, adapter)
        except BaseException as error:
            self._queue.put(None)
            worker.join()
            self._queue = queue.Queue()
            if isinstance(error, BackendError) or not isinstance(error, Exception):
                raise
            # out of memory, a broken checkpoint, a driver problem
            raise BackendError(
                f"could not load {base!r} on {device}: {type(error).__name__}: {error}"
            ) from error
        self._template_kind = kind
        self._tokenizer = tokenizer
        self._device = device
        self.resolved_model = base
        self.resolved_adapter = adapter
        self._worker = worker
        self._model = model

    def _prepare(
        self, tokenizer: Any, model: Any, base: str, adapter: str | None
    ) -> Literal["bpo", "chat"]:
        """Set the pad token and left padding; the template kind to use."""
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            elif tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
            else:
                raise BackendError(f"the tokenizer of {base!r} has no eos, unk or pad token")
        tokenizer.padding_side = "left"
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id

        has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        if self.template == "auto":
            trained_raw = any(_trained_on_bpo_template(f) for f in (adapter, base) if f)
            return "bpo" if trained_raw or not has_chat_template else "chat"
        if self.template == "chat" and not has_chat_template:
            raise BackendError(
                f"template='chat' but the tokenizer of {base!r} has no chat template: "
                "use template='bpo' (or 'auto')"
            )
        return self.template

    def _load_weights(
        self, base: str, adapter: str | None, dtype: Any, device: Any
    ) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        common = {"trust_remote_code": self.trust_remote_code}
        tokenizer_source = adapter if adapter and _has_tokenizer(adapter) else base
        tokenizer = _from_pretrained(AutoTokenizer, tokenizer_source, **common)
        model = _from_pretrained(AutoModelForCausalLM, base, dtype=dtype, **common)
        if adapter:
            try:
                from peft import PeftModel
            except ImportError as error:
                raise BackendError(f"loading a LoRA adapter needs peft: {_INSTALL_HINT}") from error
            try:
                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            except (OSError, ValueError) as error:
                raise BackendError(f"could not load the adapter {adapter!r}: {error}") from error
        model.to(device)
        model.eval()
        return tokenizer, model

    def _resolve(self) -> tuple[str, str | None]:
        """The base model and the adapter to load, with clear errors for what cannot be loaded."""
        adapter = self.adapter_id
        if self.model_id is None:
            from bpo_integrations.models import (
                default_adapter,
                default_model_path,
                ensure_default_model,
            )

            try:
                base = str(ensure_default_model())
            except BackendError:
                raise
            except Exception as error:  # a full disk, a read-only cache, a broken GGUF
                raise BackendError(
                    f"could not prepare the default model in {default_model_path()}: "
                    f"{type(error).__name__}: {error} (set BPO_CACHE_DIR to a writable folder)"
                ) from error
            if adapter is None and (shipped := default_adapter()) is not None:
                adapter = str(shipped)
        else:
            base = self.model_id
            local = Path(base).expanduser()
            if local.is_dir():
                base = str(local)
                if (local / "adapter_config.json").is_file():
                    if adapter is not None:
                        raise BackendError(
                            f"{base!r} is itself a LoRA adapter; pass its base model as `model`"
                        )
                    adapter = base
                    base = _adapter_base(local)
                elif not (local / "config.json").is_file():
                    raise BackendError(
                        f"{base!r} is a folder but holds no model (no config.json) and no LoRA "
                        "adapter (no adapter_config.json)"
                    )
            elif local.exists():
                raise BackendError(f"{base!r} is a file; pass the model's folder or a hub id")
            elif _looks_like_path(base):
                raise BackendError(f"model folder {base!r} does not exist")
        if adapter is not None:
            adapter_path = Path(adapter).expanduser()
            if adapter_path.is_dir():
                if not (adapter_path / "adapter_config.json").is_file():
                    raise BackendError(f"adapter folder {adapter!r} has no adapter_config.json")
                adapter = str(adapter_path)
            elif _looks_like_path(adapter):
                raise BackendError(f"adapter folder {adapter!r} does not exist")
        return base, adapter

    # -- generation API -------------------------------------------------------------------------

    def format_prompt(self, prompt: str) -> str:
        """The model input for one user prompt (see ``template``)."""
        if self.template_kind == "bpo":
            return format_bpo_prompt(prompt)
        messages = [{"role": "user", "content": format_bpo_message(prompt)}]
        return self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Rewrite each user prompt (templated with :meth:`format_prompt`)."""
        request = self._submit_prompts(prompts, settings)
        return self._wait(request, timeout)

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Async twin of :meth:`generate`; never blocks the event loop (loading included)."""
        if self._model is None:
            await asyncio.to_thread(self.load)
        request = self._submit_prompts(prompts, settings)
        return await self._await(request, timeout)

    def generate_raw(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        *,
        min_new_tokens: Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> list[Generation]:
        """Complete fully templated inputs (TGI's ``/generate`` semantics), micro-batched.

        A text starting with the tokenizer's BOS string gets no second BOS. With
        ``settings.min_new_tokens_from_prompt``, each row needs ``min_new_tokens[i]`` new tokens,
        by default the token count of the whole text plus 5.
        """
        request = self._submit(texts, settings, None, min_new_tokens)
        return self._wait(request, timeout)

    async def agenerate_raw(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        *,
        min_new_tokens: Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> list[Generation]:
        """Async twin of :meth:`generate_raw`."""
        if self._model is None:
            await asyncio.to_thread(self.load)
        request = self._submit(texts, settings, None, min_new_tokens)
        return await self._await(request, timeout)

    def count_tokens(self, text: str, *, add_special_tokens: bool = False) -> int:
        """How many tokens ``text`` has; safe to call from any thread."""
        tokenizer = self.tokenizer
        with self._tokenizer_lock:
            return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the thread that owns the model, between batches, and return its result.

        For code that uses :attr:`model` directly (a benchmark, a custom decoding loop): on CPU,
        each thread that runs torch gets its own OpenMP thread pool, and two pools on few cores
        slow each other down (1.6x per token measured on 2 cores with the default model).
        """
        call = _Call(fn)
        self.load()
        self._queue.put(call)
        return call.future.result()

    async def arun_in_worker(self, fn: Callable[[], T]) -> T:
        """Async :meth:`run_in_worker`; cancelled before ``fn`` starts, ``fn`` does not run."""
        if not self.loaded:
            await asyncio.to_thread(self.load)
        call = _Call(fn)
        self._queue.put(call)
        return await asyncio.wrap_future(call.future)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``batches`` (batches of rows run together), ``rows``, ``requests``,
        ``max_batch_rows``, ``segments`` (``model.generate`` calls), ``row_steps`` (rows
        times decoding steps actually run: finished rows leave the batch and stop counting) and
        ``joined_rows`` (rows that joined a batch already running) and ``prefix_tokens_reused``
        (prompt tokens not prefilled again because the rows of a batch share them)."""
        with self._stats_lock:
            return dict(self._stats)

    def recommended_settings(self) -> GenerationSettings | None:
        """The embedded default model rewrites best greedily, made to write past the prompt.

        Measured on its dev split (see its model card): with sampling or plain greedy decoding it
        often returns a short prompt unchanged; the length rule fixes that and scores higher.
        """
        if self.model_id is None and self.adapter_id is None:
            return GenerationSettings.for_mode(
                "greedy", min_new_tokens_from_prompt=True, max_new_tokens=256
            )
        return None

    def cache_identity(self) -> Hashable:
        return ("local", self.model_id, self.adapter_id, self.template)

    def close(self) -> None:
        """Stop the worker and free the model; a later call loads it again."""
        with self._load_lock:
            worker, self._worker = self._worker, None
            if worker is not None:
                self._queue.put(None)
                worker.join()
            self._queue = queue.Queue()
            self._model = None
            self._tokenizer = None
            self._device = None

    # -- submission -----------------------------------------------------------------------------

    def _submit_prompts(self, prompts: Sequence[str], settings: GenerationSettings) -> _Request:
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not a single string")
        texts = [self.format_prompt(p) for p in prompts]
        return self._submit(texts, settings, list(prompts), None)

    def _submit(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        prompts: list[str] | None,
        min_new_tokens: Sequence[int] | None,
    ) -> _Request:
        if isinstance(texts, str):
            raise TypeError("generate_raw takes a list of texts, not a single string")
        if min_new_tokens is not None and len(min_new_tokens) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(min_new_tokens)} min_new_tokens")
        self.load()
        key: Hashable = settings
        if settings.do_sample and settings.seed is not None:
            key = (settings, object())  # a seeded call alone is reproducible: never merge it
        request = _Request(
            texts=list(texts),
            settings=settings,
            prompts=prompts,
            min_new_tokens=None if min_new_tokens is None else list(min_new_tokens),
            key=key,
        )
        if not request.texts:
            request.future.set_result([])
        else:
            self._queue.put(request)
        return request

    def _wait(self, request: _Request, timeout: float | None) -> list[Generation]:
        try:
            return request.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as error:
            request.cancelled = True
            raise OptimizationTimeoutError(
                f"local generation took longer than {timeout:.3g}s"
            ) from error

    async def _await(self, request: _Request, timeout: float | None) -> list[Generation]:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(request.future), timeout)
        except asyncio.TimeoutError as error:
            request.cancelled = True
            raise OptimizationTimeoutError(
                f"local generation took longer than {timeout:.3g}s"
            ) from error
        except asyncio.CancelledError:
            request.cancelled = True
            raise

    # -- the worker thread ----------------------------------------------------------------------

    def _work(
        self,
        inbox: queue.Queue[_Request | _Call | None],
        loaded: concurrent.futures.Future[tuple[Any, Any]],
        source: tuple[str, str | None, Any, Any],
    ) -> None:
        try:
            loaded.set_result(self._load_weights(*source))
        except BaseException as error:
            loaded.set_exception(error)
            return
        self._inbox, self._pending = inbox, deque()
        running = True
        while running:
            first = self._pending.popleft() if self._pending else inbox.get()
            if first is None:
                break
            if isinstance(first, _Call):
                self._run_call(first)
                continue
            batch = [first]
            rows = len(first.texts)
            deadline = time.monotonic() + self.batch_wait_ms / 1000
            while rows < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    if self._pending:
                        item = self._pending.popleft()
                    else:
                        item = inbox.get(timeout=left) if left > 0 else inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    running = False
                    break
                if isinstance(item, _Call):
                    self._pending.appendleft(item)
                    break
                batch.append(item)
                rows += len(item.texts)
            self._run_batch(batch)
        while True:
            try:
                leftover = self._pending.popleft() if self._pending else inbox.get_nowait()
            except queue.Empty:
                break
            if leftover is not None and not leftover.future.done():
                leftover.future.set_exception(BackendError("the local backend was closed"))

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as error:
            call.future.set_exception(error)

    def _run_batch(self, batch: list[_Request]) -> None:
        groups: dict[Hashable, list[_Request]] = {}
        for request in batch:
            if request.cancelled or not request.future.set_running_or_notify_cancel():
                continue
            groups.setdefault(request.key, []).append(request)
        for requests in groups.values():
            rows = [(request, i) for request in requests for i in range(len(request.texts))]
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                chunk = [(r, i) for r, i in chunk if not (r.future.done() or r.cancelled)]
                if chunk:
                    self._run_chunk(chunk)
            for request in requests:
                if not request.future.done():  # its caller gave up halfway through
                    request.future.set_exception(OptimizationTimeoutError("cancelled by caller"))

    def _run_chunk(self, chunk: list[tuple[_Request, int]]) -> None:
        owners = list(dict.fromkeys(request for request, _ in chunk))
        try:
            generations = self._generate_rows(chunk, owners)
        except Exception as error:
            failure = error if isinstance(error, BackendError) else _wrap_error(error)
            for request in owners:
                if not request.future.done():
                    request.future.set_exception(failure)
            return
        for (request, index), generation in zip(chunk, generations, strict=True):
            request.results[index] = generation
        for request in owners:
            if not request.future.done() and all(r is not None for r in request.results):
                request.future.set_result(list(request.results))  # type: ignore[arg-type]

    def _generate_rows(
        self, chunk: list[tuple[_Request, int]], owners: list[_Request]
    ) -> list[Generation]:
        import torch
        from transformers import StopStringCriteria

        settings = chunk[0][0].settings
        tokenizer, model, device = self._tokenizer, self._model, self._device
        with self._tokenizer_lock:
            encoded = [self._encode(request.texts[i]) for request, i in chunk]
            minimums = [
                self._min_new_tokens(request, i, ids)
                for (request, i), ids in zip(chunk, encoded, strict=True)
            ]
            batch = tokenizer.pad(
                {"input_ids": encoded}, padding=True, padding_side="left", return_tensors="pt"
            )
            bad_words = self._bad_words_ids(settings.bad_words) if settings.bad_words else None
            stop_strings = (
                StopStringCriteria(tokenizer=tokenizer, stop_strings=list(settings.stop))
                if settings.stop and len(chunk) > 1
                else None
            )
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        eos_ids = _eos_ids(model, tokenizer)

        kwargs: dict[str, Any] = {
            "do_sample": settings.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if bad_words:
            kwargs["bad_words_ids"] = bad_words

        seeded = settings.do_sample and settings.seed is not None
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=cuda, enabled=seeded):
            if seeded:
                torch.manual_seed(settings.seed)
            # A lone unseeded sampling row decodes in segments too, so that calls arriving just
            # after it can join; a greedy one gains more from prompt lookup, a seeded one runs
            # alone anyway.
            if len(chunk) == 1 and (seeded or not settings.do_sample):
                rows, segments, row_steps = self._generate_one(
                    input_ids, attention_mask, settings, owners, minimums, eos_ids, kwargs
                )
            else:
                rows, segments, row_steps = self._generate_segments(
                    input_ids,
                    attention_mask,
                    settings,
                    chunk,
                    owners,
                    encoded,
                    minimums,
                    eos_ids,
                    stop_strings,
                    kwargs,
                )

        with self._stats_lock:
            self._stats["batches"] += 1
            self._stats["rows"] += len(chunk)
            self._stats["requests"] += len(owners)
            self._stats["max_batch_rows"] = max(self._stats["max_batch_rows"], len(chunk))
            self._stats["segments"] += segments
            self._stats["row_steps"] += row_steps
        with self._tokenizer_lock:
            return [
                self._to_generation(ids, len(prompt_ids), settings, eos_ids)
                for ids, prompt_ids in zip(rows, encoded, strict=True)
            ]

    def _generate_one(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        settings: GenerationSettings,
        owners: list[_Request],
        minimums: list[int],
        eos_ids: tuple[int, ...],
        kwargs: dict[str, Any],
    ) -> tuple[list[list[int]], int, int]:
        """One greedy or seeded row in one ``model.generate`` (greedy rows use prompt lookup)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        kwargs = dict(kwargs, max_new_tokens=settings.max_new_tokens)
        kwargs["stopping_criteria"] = StoppingCriteriaList([_AllCancelled(owners)])
        if settings.stop:
            kwargs.update(stop_strings=list(settings.stop), tokenizer=self._tokenizer)
        if any(minimums):
            kwargs["logits_processor"] = LogitsProcessorList(
                [_RowMinNewTokens(input_ids.shape[1], minimums, eos_ids)]
            )
        if self.prompt_lookup and not settings.do_sample:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_tokens
        output = self._model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        return new_tokens, 1, len(new_tokens[0])

    def _generate_segments(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        settings: GenerationSettings,
        chunk: list[tuple[_Request, int]],
        owners: list[_Request],
        encoded: list[list[int]],
        minimums: list[int],
        eos_ids: tuple[int, ...],
        stop_strings: Any,
        kwargs: dict[str, Any],
    ) -> tuple[list[list[int]], int, int]:
        """Generate ``segment_tokens`` at a time; finished rows leave, the rest keep the cache.

        Between segments, waiting requests with the same key join: their rows are appended to
        ``chunk``, ``owners``, ``encoded`` and ``minimums`` (the caller reads them back).
        """
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        key = chunk[0][0].key
        sampler = None
        if settings.do_sample:
            sampler = NucleusSampler(settings.temperature, settings.top_p)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("temperature", "top_p")}
            kwargs["do_sample"] = False  # the sampler draws; greedy decoding takes its token
        results: list[list[int]] = [[] for _ in chunk]
        generated = [0] * len(chunk)
        active = list(range(len(chunk)))
        ids, mask, cache = self._prefill_shared_prefix(encoded) or (input_ids, attention_mask, None)
        segments = row_steps = 0
        while True:
            width = ids.shape[1]
            room = min(settings.max_new_tokens - generated[row] for row in active)
            steps = min(self.segment_tokens, room)
            tracker = _RowTracker(
                [chunk[row][0] for row in active],
                eos_ids,
                stop_strings,
                interrupt=self._has_joiners if len(active) < self.max_batch_size else bool,
            )
            segment_kwargs = dict(
                kwargs,
                max_new_tokens=steps,
                stopping_criteria=StoppingCriteriaList([tracker]),
                return_dict_in_generate=True,
            )
            row_minimums = [max(0, minimums[row] - generated[row]) for row in active]
            processors: list[Any] = []
            if any(row_minimums):
                processors.append(_RowMinNewTokens(width, row_minimums, eos_ids))
            if sampler is not None:
                processors.append(sampler)
            if processors:
                segment_kwargs["logits_processor"] = LogitsProcessorList(processors)
            output = self._model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache, **segment_kwargs
            )
            sequences, cache = output.sequences, output.past_key_values
            added = sequences.shape[1] - width
            segments += 1
            row_steps += len(active) * added
            done = tracker.done.tolist() if tracker.done is not None else [False] * len(active)
            keep = []
            for position, row in enumerate(active):
                generated[row] += added
                stopped = added < steps and not tracker.interrupted
                if done[position] or generated[row] >= settings.max_new_tokens or stopped:
                    results[row] = sequences[position, -generated[row] :].tolist()
                else:
                    keep.append(position)
            if not keep:
                return results, segments, row_steps
            if len(keep) < len(active):
                index = torch.tensor(keep, device=sequences.device)
                sequences, mask = sequences[index], mask[index]
                cache.batch_select_indices(index)
            mask = torch.cat([mask, mask.new_ones((len(keep), added))], dim=1)
            ids = sequences
            active = [active[position] for position in keep]

            joiners = self._take_joiners(key, self.max_batch_size - len(active), cache)
            if joiners:
                new_rows = [(request, i) for request in joiners for i in range(len(request.texts))]
                with self._tokenizer_lock:
                    new_encoded = [self._encode(request.texts[i]) for request, i in new_rows]
                    new_minimums = [
                        self._min_new_tokens(request, i, row_ids)
                        for (request, i), row_ids in zip(new_rows, new_encoded, strict=True)
                    ]
                ids, mask = self._merge_rows(ids, mask, cache, new_encoded)
                active += range(len(chunk), len(chunk) + len(new_rows))
                chunk += new_rows
                owners += joiners
                encoded += new_encoded
                minimums += new_minimums
                results += [[] for _ in new_rows]
                generated += [0] * len(new_rows)
                with self._stats_lock:
                    self._stats["joined_rows"] += len(new_rows)

    def _prefill_shared_prefix(
        self, encoded: list[list[int]], width: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """Prefill the tokens every row starts with (the BPO template) once, for all rows.

        The rows are laid out right-aligned in at least ``width`` columns: left padding, the
        shared prefix, more left padding, then each row's own tokens. The cache returned holds
        the columns up to the rows' own tokens. ``None`` for a single row, or rows that share
        fewer than ``_MIN_SHARED_PREFIX`` tokens.
        """
        import torch
        import torch.nn.functional as F

        shared = 0
        for column in zip(*encoded, strict=False):
            if any(token != column[0] for token in column):
                break
            shared += 1
        shared = min(shared, min(len(row) for row in encoded) - 1)  # each row keeps a token
        if shared < _MIN_SHARED_PREFIX or len(encoded) < 2:
            return None
        rest = max(len(row) for row in encoded) - shared
        width = max(width, shared + rest)
        start = width - rest - shared
        pad = self._tokenizer.pad_token_id
        device = self._device
        ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        ids[:, start : start + shared] = torch.tensor(encoded[0][:shared], device=device)
        mask[:, start : start + shared] = 1
        for row, row_ids in enumerate(encoded):
            own = torch.tensor(row_ids[shared:], device=device)
            ids[row, width - len(own) :] = own
            mask[row, width - len(own) :] = 1
        prefix = ids[:1, start : start + shared]
        cache = self._model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        for layer in cache.layers:
            layer.keys = F.pad(layer.keys.expand(len(encoded), -1, -1, -1), (0, 0, start, 0))
            layer.values = F.pad(layer.values.expand(len(encoded), -1, -1, -1), (0, 0, start, 0))
        with self._stats_lock:
            self._stats["prefix_tokens_reused"] += shared * (len(encoded) - 1)
        return ids, mask, cache

    def _has_joiners(self) -> bool:
        """Whether calls wait in the inbox (a running batch with room ends its segment early)."""
        return not self._inbox.empty()

    def _take_joiners(self, key: Hashable, room: int, cache: Any) -> list[_Request]:
        """Waiting requests with ``key`` that fit in ``room`` rows; others wait in order."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        mergeable = type(cache) is DynamicCache and all(
            type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers
        )
        joiners: list[_Request] = []
        while True:  # what cannot join waits in order (and no longer interrupts segments)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return joiners
            if (
                not mergeable
                or item is None
                or isinstance(item, _Call)
                or item.key != key
                or len(item.texts) > room
            ):
                self._pending.append(item)
                if item is None:
                    return joiners
                continue
            if item.cancelled or not item.future.set_running_or_notify_cancel():
                continue
            joiners.append(item)
            room -= len(item.texts)

    def _merge_rows(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: Any, new_encoded: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill the new rows and append them to the batch, all left-padded to one width.

        The running cache holds every position but the last of ``ids``; so will the new rows'.
        """
        import torch
        import torch.nn.functional as F

        pad = self._tokenizer.pad_token_id
        shared = self._prefill_shared_prefix(new_encoded, ids.shape[1])
        if shared is None:
            width = max(ids.shape[1], max(len(row) for row in new_encoded))
            new_ids = ids.new_full((len(new_encoded), width), pad)
            new_mask = mask.new_zeros((len(new_encoded), width))
            for row, row_ids in enumerate(new_encoded):
                new_ids[row, width - len(row_ids) :] = torch.tensor(row_ids, device=ids.device)
                new_mask[row, width - len(row_ids) :] = 1
            prefill, cached = None, 0
        else:
            new_ids, new_mask, prefill = shared
            width = new_ids.shape[1]
            cached = prefill.get_seq_length()
        if cached < width - 1:
            positions = (new_mask.cumsum(-1) - 1).clamp(min=0)
            prefill = self._model(
                input_ids=new_ids[:, cached:-1],
                attention_mask=new_mask[:, :-1],
                position_ids=positions[:, cached:-1],
                past_key_values=prefill,
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
        shift = width - ids.shape[1]
        for layer, fresh in zip(cache.layers, prefill.layers, strict=True):
            layer.keys = torch.cat([F.pad(layer.keys, (0, 0, shift, 0)), fresh.keys], dim=0)
            layer.values = torch.cat([F.pad(layer.values, (0, 0, shift, 0)), fresh.values], dim=0)
        ids = torch.cat([F.pad(ids, (shift, 0), value=pad), new_ids], dim=0)
        mask = torch.cat([F.pad(mask, (shift, 0), value=0), new_mask], dim=0)
        return ids, mask

    def _encode(self, text: str) -> list[int]:
        bos = self._tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self._tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _min_new_tokens(self, request: _Request, index: int, text_ids: list[int]) -> int:
        if not request.settings.min_new_tokens_from_prompt:
            return 0
        if request.min_new_tokens is not None:
            return request.min_new_tokens[index]
        if request.prompts is not None:
            prompt = request.prompts[index]
            return len(self._tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 5
        return len(text_ids) + 5

    def _bad_words_ids(self, words: tuple[str, ...]) -> list[list[int]]:
        cached = self._bad_words_cache.get(words)
        if cached is None:
            variants: dict[tuple[int, ...], None] = {}
            for word in words:
                for form in (word, " " + word):
                    ids = self._tokenizer(form, add_special_tokens=False)["input_ids"]
                    if ids:
                        variants[tuple(ids)] = None
            cached = self._bad_words_cache[words] = [list(ids) for ids in variants]
        return cached

    def _to_generation(
        self,
        ids: list[int],
        prompt_tokens: int,
        settings: GenerationSettings,
        eos_ids: tuple[int, ...],
    ) -> Generation:
        pad = self._tokenizer.pad_token_id
        finish: FinishReason = "length"
        count = len(ids)
        for position, token in enumerate(ids):
            if token in eos_ids:
                count, finish = position + 1, "eos_token"
                break
        else:
            while count and ids[count - 1] == pad:
                count -= 1
        kept = ids[: count - 1] if finish == "eos_token" else ids[:count]
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        cut = _first_stop(text, settings.stop)
        if cut is not None:
            text, finish = text[:cut], "stop_sequence"
        elif finish == "length" and count < settings.max_new_tokens:
            finish = "unknown"  # stopped early without eos or a stop string: a cancelled call
        return Generation(
            text=text,
            finish_reason=finish,
            generated_tokens=count,
            extra={"prompt_tokens": prompt_tokens, "token_ids": ids[:count]},
        )


class _RowMinNewTokens:
    """Forbid EOS in each row until it has generated its own minimum of new tokens."""

    def __init__(self, prompt_length: int, minimums: list[int], eos_ids: tuple[int, ...]) -> None:
        self.prompt_length = prompt_length
        self.minimums = minimums
        self.eos_ids = list(eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        rows = [row for row, minimum in enumerate(self.minimums) if generated < minimum]
        if rows and self.eos_ids:
            scores = scores.clone()
            for row in rows:
                scores[row, self.eos_ids] = float("-inf")
        return scores


class _RowTracker:
    """Record which rows of a segment finished (eos, a stop string, their caller gave up).

    When ``interrupt()`` says so (calls are waiting to join), the segment ends after this step
    for every row; ``interrupted`` tells that apart from all rows finishing.
    """

    def __init__(
        self,
        row_owners: list[_Request],
        eos_ids: tuple[int, ...],
        stop_strings: Any,
        interrupt: Callable[[], bool],
    ) -> None:
        self.row_owners = row_owners
        self.eos_ids = list(eos_ids)
        self.stop_strings = stop_strings
        self.interrupt = interrupt
        self.interrupted = False
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        import torch

        device = input_ids.device
        finished = torch.tensor([r.cancelled for r in self.row_owners], device=device)
        if self.eos_ids:
            eos = torch.tensor(self.eos_ids, device=device)
            finished = finished | torch.isin(input_ids[:, -1], eos)
        if self.stop_strings is not None:
            finished = finished | self.stop_strings(input_ids, scores)
        self.done = finished if self.done is None else self.done | finished
        if self.interrupt():
            self.interrupted = True
            return torch.ones_like(finished)
        return finished


class _AllCancelled:
    """Stop a batch early once every caller in it has given up (timed out or cancelled)."""

    def __init__(self, owners: list[_Request]) -> None:
        self.owners = owners

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        import torch

        stop = all(owner.cancelled for owner in self.owners)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop]
    found = [p for p in positions if p >= 0]
    return min(found) if found else None


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return ()
    return tuple(configured) if isinstance(configured, list | tuple) else (int(configured),)


def _pick_device(torch: Any, requested: str | None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as error:
            raise BackendError(f"unknown device {requested!r}: {error}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {requested!r} asked for, but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_dtype(torch: Any, requested: str | None, device: torch.device) -> torch.dtype:
    if requested is not None:
        return getattr(torch, _DTYPES[requested])
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _looks_like_path(ref: str) -> bool:
    """Whether ``ref`` can only be a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return ref.startswith((".", "~")) or _HUB_ID.fullmatch(ref) is None


def _has_tokenizer(folder: str) -> bool:
    path = Path(folder)
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def _adapter_base(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackendError(f"cannot read {adapter / 'adapter_config.json'}: {error}") from error
    base = config.get("base_model_name_or_path")
    if not base:
        raise BackendError(
            f"{adapter / 'adapter_config.json'} names no base_model_name_or_path: pass "
            "LocalBackend(base_model, adapter=...)"
        )
    if base == DEFAULT_MODEL_HUB_ID:  # the shipped adapter was trained on the converted GGUF
        from bpo_integrations.models import ensure_default_model

        return str(ensure_default_model())
    return str(base)


def _trained_on_bpo_template(folder: str) -> bool:
    """Whether ``folder`` is a ``bpo-train sft`` output trained on the raw BPO template."""
    try:
        record = json.loads((Path(folder) / "bpo_training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("template") == BPO_TEMPLATE


def _from_pretrained(factory: Any, ref: str, **kwargs: Any) -> Any:
    """``factory.from_pretrained`` with one clear error for a model that cannot be found."""
    try:
        return factory.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as error:
        raise BackendError(_load_error_message(ref, error)) from error


def _load_error_message(ref: str, error: BaseException) -> str:
    if Path(ref).expanduser().is_dir():
        return f"could not load the model in {ref!r}: {error}"
    offline = False
    try:
        from huggingface_hub import constants

        offline = bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    if offline:
        return (
            f"could not load {ref!r}: it is not a local folder and not in the Hugging Face cache, "
            "and the hub is off (HF_HUB_OFFLINE=1). Download it where there is network "
            f"(`hf download {ref}`), or pass a local model folder"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"could not load {ref!r} from the Hugging Face hub ({first_line}). Check the id and your "
        "network, or pass a local model folder"
    )


def _wrap_error(error: Exception) -> BackendError:
    wrapped = BackendError(f"local generation failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
