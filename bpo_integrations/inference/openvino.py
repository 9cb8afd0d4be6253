"""OpenVINO GenAI as the in-process engine: continuous batching on the CPU.

OpenVINO GenAI's ``ContinuousBatchingPipeline`` schedules the requests it holds (paged attention,
prefix caching of the BPO template the requests share, per-request sampling with a seed, stop
strings and minimum lengths). Its serving pattern is one thread that adds the requests handed to
it and calls ``step()`` while any is unfinished, reading each request's new tokens from its
handle; that thread is :class:`OpenVINOEngine`'s. ``openvino_genai`` is imported when an engine is
made, never by ``import bpo_integrations``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from bpo_integrations.inference.engine import (
    Completion,
    EngineClosedError,
    EngineRequest,
    SamplingParams,
    TokenStep,
    split_at_stop,
)
from bpo_integrations.settings import FinishReason

_log = logging.getLogger(__name__)


class TokenizerMethods:
    """An engine's tokenizer methods, answered by its :class:`OpenVINOTokenizer`."""

    tokenizer: OpenVINOTokenizer

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer.has_chat_template

    @property
    def max_token_bytes(self) -> int:
        return self.tokenizer.max_token_bytes

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages)


class OpenVINOEngine(TokenizerMethods):
    """A prepared OpenVINO model folder, served to many threads through continuous batching.

    Args:
        path: a folder with ``openvino_model.xml`` and its tokenizer (see
            :func:`~bpo_integrations.inference.prepare.prepare_model`).
        max_batch_size: the most requests decoded together (the scheduler's ``max_num_seqs``).
        max_batched_tokens: the most tokens one step processes (long prompts are prefilled in
            chunks of this size while other requests keep decoding).
        kv_cache_gb: memory for the paged KV cache, in GB.
        prefix_caching: reuse the KV cache of a prompt prefix another request already computed
            (every BPO request starts with the same template).
        device: the OpenVINO device (``"CPU"``, or ``"GPU"`` for an Intel GPU).

    Example:
        >>> from bpo_integrations.inference.engine import SamplingParams
        >>> from bpo_integrations.inference.prepare import prepare_model
        >>> engine = OpenVINOEngine(prepare_model().path)  # doctest: +SKIP
        >>> ids = engine.encode("[INST] ... Tell me about Harry Potter [/INST]")  # doctest: +SKIP
        >>> completion = engine.submit(ids, SamplingParams(32)).result()  # doctest: +SKIP
        >>> engine.decode(completion.token_ids)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch_size: int = 16,
        max_batched_tokens: int = 1024,
        kv_cache_gb: int = 1,
        prefix_caching: bool = True,
        device: str = "CPU",
    ) -> None:
        import openvino_genai

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._genai = openvino_genai
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.max_num_seqs = max_batch_size
        scheduler.max_num_batched_tokens = max_batched_tokens
        scheduler.cache_size = kv_cache_gb
        scheduler.enable_prefix_caching = prefix_caching
        # float32 arithmetic everywhere: on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise
        # compute in bfloat16 and greedy rewrites would depend on the machine. Dynamic
        # quantization (8-bit activations for 8-bit weights) is off: with it, a request's greedy
        # rewrite depends on which other requests share its steps, so the served path, where
        # requests arrive apart, would answer differently from the in-process one.
        properties: dict[str, Any] = (
            {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
            if device == "CPU"
            else {}
        )
        self.path = Path(path)
        self.max_batch_size = max_batch_size
        self._pipeline = openvino_genai.ContinuousBatchingPipeline(
            str(self.path), scheduler, device, properties
        )
        self.tokenizer = OpenVINOTokenizer(self._pipeline.get_tokenizer())
        defaults = self._pipeline.get_config()  # the model's generation_config.json, if any
        eos = {self.tokenizer.eos_token_id, *map(int, defaults.stop_token_ids)}
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        self.max_positions: int | None = None
        self._ids = itertools.count()
        self._inbox: queue.SimpleQueue[tuple[EngineRequest, list[int], SamplingParams] | None] = (
            queue.SimpleQueue()
        )
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "steps": 0, "generated_tokens": 0, "max_running": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bpo-openvino-engine", daemon=True)
        self._thread.start()

    # -- requests -------------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> EngineRequest:
        """Hand a request to the engine's thread; read it from the returned handle."""
        request = EngineRequest(next(self._ids), len(prompt_ids))
        self.submit_request(request, prompt_ids, params)
        return request

    def submit_request(
        self, request: EngineRequest, prompt_ids: Sequence[int], params: SamplingParams
    ) -> None:
        """:meth:`submit` with a handle of the caller's own (one that forwards what it is told)."""
        if self._closed:
            raise EngineClosedError("the engine is closed")
        self._inbox.put((request, [int(i) for i in prompt_ids], params))

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``requests``, ``steps`` (scheduler steps run), ``generated_tokens`` and
        ``max_running`` (the most requests in flight at once)."""
        with self._stats_lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop the engine's thread; unfinished requests fail with :class:`EngineClosedError`."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join()

    # -- the engine's thread --------------------------------------------------------------------

    def _run(self) -> None:
        running: dict[EngineRequest, _Running] = {}
        closing = False
        while not closing:
            item: tuple[EngineRequest, list[int], SamplingParams] | Literal[False] | None
            try:
                item = self._inbox.get(block=not running)
            except queue.Empty:
                item = False
            while item is not False:
                if item is None:
                    closing = True
                    break
                self._add(*item, running)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False
            if closing or not running:
                continue
            for request, state in list(running.items()):
                if request.cancelled:
                    state.handle.stop()
            try:
                self._pipeline.step()
            except Exception as error:  # a broken model or an out-of-memory: fail what runs
                _log.exception("OpenVINO GenAI step failed")
                for request in running:
                    request._finish(None, error)
                running.clear()
                continue
            self._count("steps")
            for request, state in list(running.items()):
                if state.read(request):
                    del running[request]
        self._release(running)
        self._drain_inbox()

    def _release(self, running: dict[EngineRequest, _Running]) -> None:
        """Fail the unfinished requests and give their KV-cache blocks back. The pipeline frees a
        stopped request's blocks at its next step; destroyed with requests still in it, it
        reports them on stderr as leaked."""
        for request, state in running.items():
            state.handle.stop()
            request._finish(None, EngineClosedError("the engine was closed"))
        if running:
            try:
                self._pipeline.step()
            except Exception:  # closing anyway: the leak report is all that is lost
                _log.debug("OpenVINO GenAI step while closing failed", exc_info=True)

    def _add(
        self,
        request: EngineRequest,
        ids: list[int],
        params: SamplingParams,
        running: dict[EngineRequest, _Running],
    ) -> None:
        if request.cancelled:
            request._finish(Completion((), "length", request.prompt_tokens))
            return
        import numpy as np
        import openvino

        try:
            tensor = openvino.Tensor(np.asarray([ids], dtype=np.int64))
            handle = self._pipeline.add_request(
                request.request_id, tensor, self._generation_config(params)
            )
        except Exception as error:
            request._finish(None, error)
            return
        running[request] = _Running(handle, params, self)
        with self._stats_lock:
            self._stats["requests"] += 1
            self._stats["max_running"] = max(self._stats["max_running"], len(running))

    def _generation_config(self, params: SamplingParams) -> Any:
        config = self._genai.GenerationConfig()
        config.stop_token_ids = set(self.eos_token_ids)
        config.max_new_tokens = params.max_new_tokens
        config.min_new_tokens = params.min_new_tokens
        config.do_sample = params.do_sample
        if params.do_sample:
            config.temperature = params.temperature
            config.top_p = params.top_p
            config.top_k = params.top_k or 0
            # OpenVINO GenAI's default seed is fixed: an unseeded request gets a fresh one
            config.rng_seed = params.seed if params.seed is not None else secrets.randbits(31)
        config.repetition_penalty = params.repetition_penalty
        config.presence_penalty = params.presence_penalty
        config.frequency_penalty = params.frequency_penalty
        if params.stop:
            config.stop_strings = set(params.stop)
            config.include_stop_str_in_output = True
        if params.logprobs:
            config.logprobs = 1
        return config

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += amount

    def _drain_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0]._finish(None, EngineClosedError("the engine was closed"))


class OpenVINOTokenizer:
    """An OpenVINO GenAI tokenizer, safe to share between threads.

    Args:
        tokenizer: an ``openvino_genai.Tokenizer``, or a model folder to load one from (its
            ``openvino_tokenizer.xml`` and ``openvino_detokenizer.xml``).
    """

    def __init__(self, tokenizer: Any) -> None:
        if isinstance(tokenizer, str | Path):
            import openvino_genai

            tokenizer = openvino_genai.Tokenizer(str(tokenizer))
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.eos_token_id = int(tokenizer.get_eos_token_id())
        # The first tensor-to-NumPy conversion in a process initialises pybind11's NumPy API, and
        # two threads making it at once deadlock (one waits for the GIL the other holds): make it
        # here, before any other thread can use this tokenizer or the engine.
        self.encode("")

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The UTF-8 length of the longest token: a text of ``n`` bytes has at least
        ``n / max_token_bytes`` tokens, known without tokenizing it."""
        with self._lock:
            return max(len(token) for token in self._tokenizer.get_vocab())

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """The token ids of ``text``; :class:`ValueError` for a text UTF-8 cannot hold (a lone
        surrogate), which the tokenizer's binding refuses with an unrelated ``TypeError``."""
        try:
            with self._lock:
                encoded = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        except TypeError:
            try:  # checked only on failure: the texts that encode pay nothing for it
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"the text is not valid Unicode: {error.reason} at character {error.start}"
                ) from None
            raise
        return [int(i) for i in encoded.input_ids.data[0]]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if not ids:
            return ""
        with self._lock:
            return str(
                self._tokenizer.decode(
                    [int(i) for i in ids], skip_special_tokens=skip_special_tokens
                )
            )

    @property
    def has_chat_template(self) -> bool:
        return bool(self._tokenizer.chat_template)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        with self._lock:
            return str(self._tokenizer.apply_chat_template(messages, add_generation_prompt=True))


class _Running:
    """A request inside the pipeline: its handle and what it produced so far."""

    def __init__(self, handle: Any, params: SamplingParams, engine: OpenVINOEngine) -> None:
        self.handle = handle
        self.params = params
        self.engine = engine
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish: Any = None

    def read(self, request: EngineRequest) -> bool:
        """Pass new tokens on; ``True`` once the request has finished."""
        genai = self.engine._genai
        if self.handle.can_read():
            for output in self.handle.read().values():
                fresh = [int(i) for i in output.generated_ids]
                if fresh:
                    probs = (
                        [float(p) for p in output.generated_log_probs]
                        if self.params.logprobs
                        else []
                    )
                    self.ids.extend(fresh)
                    self.logprobs.extend(probs)
                    self.engine._count("generated_tokens", len(fresh))
                    request._push(TokenStep(tuple(fresh), tuple(probs)))
                if output.finish_reason != genai.GenerationFinishReason.NONE:
                    self.finish = output.finish_reason
        status = self.handle.get_status()
        if status == genai.GenerationStatus.RUNNING:
            return False
        if status == genai.GenerationStatus.IGNORED and not request.cancelled:
            request._finish(
                None,
                ValueError(
                    f"the request ({request.prompt_tokens} prompt tokens) does not fit the "
                    "engine's KV cache"
                ),
            )
            return True
        reason, stop = self._finish_reason()
        request._finish(
            Completion(tuple(self.ids), reason, request.prompt_tokens, tuple(self.logprobs), stop)
        )
        return True

    def _finish_reason(self) -> tuple[FinishReason, str | None]:
        genai = self.engine._genai
        if self.finish == genai.GenerationFinishReason.LENGTH:
            return "length", None
        if self.ids and self.ids[-1] in self.engine.eos_token_ids:
            return "eos_token", None
        if self.params.stop and self.finish == genai.GenerationFinishReason.STOP:
            text = self.engine.decode(self.ids, skip_special_tokens=False)
            _, stop = split_at_stop(text, self.params.stop)
            return "stop_sequence", stop or self.params.stop[0]
        if len(self.ids) >= self.params.max_new_tokens:
            return "length", None
        return "eos_token", None
