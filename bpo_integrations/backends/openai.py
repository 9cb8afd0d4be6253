"""Optimizer backends on an OpenAI-compatible API (``openai`` client).

- :class:`OpenAIBackend`: the BPO model served by vLLM, SGLang, llama.cpp's server, TGI's ``/v1``
  or ``bpo serve``, given the raw BPO template on ``/v1/completions`` (or the BPO user message on
  ``/v1/chat/completions`` with ``api="chat"``).
- :class:`OpenAIPromptEngineerBackend`: a general chat model (gpt-4o, ...) instructed to act as a
  prompt engineer, the BPO paper's "optimize without feedback" baseline.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

from bpo_integrations.backends._http import map_in_threads, raise_mapped
from bpo_integrations.backends.base import Backend
from bpo_integrations.clients import PerLoopClients, aclose_on_their_loops, close_on_their_loops
from bpo_integrations.errors import BackendError, OptimizationTimeoutError
from bpo_integrations.settings import Generation, GenerationSettings
from bpo_integrations.template import format_bpo_message, format_bpo_prompt

try:
    import openai
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the OpenAI backends need openai>=1.40: pip install 'bpo-integrations[openai]'"
    ) from error
# A client loads each API's module on its first use, which took longer than a short latency
# budget: load them now, with the backend, rather than inside the first request.
import openai.resources.chat.completions
import openai.resources.completions

# after the check above, which says how to install openai
from bpo_integrations.backends.openai_errors import map_openai_error

DEFAULT_PROMPT_ENGINEER_INSTRUCTION = (
    "You are an expert prompt engineer. Rewrite the user's prompt, given between <prompt> and "
    "</prompt>, so that a large language model gives a more helpful and harmless response: make "
    "the intent explicit, say what a good answer should cover (key points, structure, level of "
    "detail, format) and clarify vague wording. Do not answer the prompt and do not change its "
    "task.\n"
    "Keep every fact, name, number, code block, quotation, URL and placeholder (such as {name}) "
    "exactly as written, and write in the prompt's language.\n"
    "Output only the rewritten prompt, without the <prompt> tags, preamble, explanation or "
    "quotes."
)
"""The system instruction of :class:`OpenAIPromptEngineerBackend`."""

Api = Literal["completions", "chat"]


class _ChatBackend(Backend):
    """Shared client, settings mapping, concurrency and error mapping of the OpenAI backends.

    ``api`` is the route each prompt goes to: ``"completions"`` sends :meth:`prompt_text` as the
    raw ``prompt`` of ``/completions``, ``"chat"`` sends :meth:`messages` to
    ``/chat/completions``, where the server's chat template wraps them.
    """

    kind = "openai"
    max_batch_size = 1
    api: Api = "chat"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        max_concurrency: int = 16,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                f"model must be the served model's name (GET {{base_url}}/models), got {model!r}"
            )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None:
                raise ValueError(
                    "no API key: pass api_key=... or set OPENAI_API_KEY (or pass base_url=... "
                    "for a self-hosted server that needs no key)"
                )
            api_key = "EMPTY"  # self-hosted servers (vLLM, TGI) accept any key
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.max_concurrency: int = max_concurrency
        self._client_kwargs: dict[str, Any] = {
            "api_key": api_key,
            "base_url": self.base_url,
            "max_retries": 0,  # the optimizer retries, within its latency budget
            "default_headers": dict(default_headers or {}) or None,
        }
        self._sync_client: openai.OpenAI | None = None
        self._async_clients: PerLoopClients[openai.AsyncOpenAI] = PerLoopClients(
            lambda: openai.AsyncOpenAI(**self._client_kwargs)
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def where(self) -> str:
        """Where the requests go, as error messages name it."""
        return self.base_url or "the OpenAI API"

    @abstractmethod
    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat messages sent for one user prompt (``api="chat"``)."""

    def prompt_text(self, prompt: str) -> str:
        """The raw ``prompt`` sent for one user prompt (``api="completions"``)."""
        raise NotImplementedError(f"{type(self).__name__} has no completions prompt")

    def completion_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        """The sampling keyword arguments of ``completions.create`` and
        ``chat.completions.create`` for ``settings``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0,
        }
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        if settings.stop:
            kwargs["stop"] = list(settings.stop)
        return kwargs

    def _request_timeout(self, timeout: float | None) -> float | None:
        if timeout is not None and timeout <= 0:
            raise OptimizationTimeoutError(f"latency budget spent before the call to {self.where}")
        limits = [t for t in (self.timeout, timeout) if t is not None]
        return min(limits) if limits else None

    def _create_kwargs(
        self, prompt: str, settings: GenerationSettings, timeout: float | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any]
        if self.api == "completions":
            kwargs = {"prompt": self.prompt_text(prompt), **self.completion_kwargs(settings)}
        else:
            kwargs = {"messages": self.messages(prompt), **self.completion_kwargs(settings)}
        request_timeout = self._request_timeout(timeout)
        if request_timeout is not None:
            kwargs["timeout"] = request_timeout
        return kwargs

    def _create(self, client: Any, kwargs: dict[str, Any]) -> Any:
        """``client``'s create call for :attr:`api` (a coroutine for an async client)."""
        if self.api == "completions":
            return client.completions.create(**kwargs)
        return client.chat.completions.create(**kwargs)

    def client(self) -> openai.OpenAI:
        """The sync client, made on first use."""
        with self._lock:
            if self._sync_client is None:
                self._sync_client = openai.OpenAI(**self._client_kwargs)
            return self._sync_client

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        client = self.client()
        started = time.perf_counter()

        def one(prompt: str) -> Generation:
            try:
                completion = self._create(client, self._create_kwargs(prompt, settings, timeout))
            except Exception as error:
                raise_mapped(self._map_error, error, started)
            return self._to_generation(completion)

        return map_in_threads(one, prompts, self.max_concurrency)

    async def agenerate(
        self, prompts: Sequence[str], settings: GenerationSettings, *, timeout: float | None = None
    ) -> list[Generation]:
        semaphore = asyncio.Semaphore(self.max_concurrency)
        started = time.perf_counter()
        client = self._async_clients.get()

        async def one(prompt: str) -> Generation:
            async with semaphore:
                try:
                    completion = await self._create(
                        client, self._create_kwargs(prompt, settings, timeout)
                    )
                except openai.NotFoundError as error:  # asks the server why, off the loop
                    mapped = await asyncio.to_thread(self._map_error, error, 0.0)
                    raise mapped from error
                except Exception as error:
                    raise_mapped(self._map_error, error, started)
            return self._to_generation(completion)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    def _to_generation(self, completion: Any) -> Generation:
        try:
            choice = completion.choices[0]
            text = choice.text if self.api == "completions" else choice.message.content
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError) as error:
            raise BackendError(
                f"{self.where} answered a completion without a choice: {completion!r:.200}"
            ) from error
        # vLLM names the stop string that ended a completion in `stop_reason`, SGLang in
        # `matched_stop` (a token id, or None, when the model's end-of-sequence token ended it)
        matched = getattr(choice, "stop_reason", None) or getattr(choice, "matched_stop", None)
        reason: Any = "unknown"
        if finish == "length":
            reason = "length"
        elif finish:
            reason = "stop_sequence" if isinstance(matched, str) else "eos_token"
        usage = getattr(completion, "usage", None)
        return Generation(
            text=self._clean(text or ""),
            finish_reason=reason,
            generated_tokens=getattr(usage, "completion_tokens", None),
            model=getattr(completion, "model", None),
            raw_finish_reason=finish,
        )

    def _clean(self, text: str) -> str:
        return text

    def close(self) -> None:
        with self._lock:
            client, self._sync_client = self._sync_client, None
        close_on_their_loops(self._async_clients.drain(), openai.AsyncOpenAI.close)
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        await aclose_on_their_loops(self._async_clients.drain(), openai.AsyncOpenAI.close)
        self.close()

    # Clients, their pools and the lock belong to this process; a copy makes its own.
    _UNPICKLED = ("_sync_client", "_async_clients", "_lock")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sync_client = None
        self._async_clients = PerLoopClients(lambda: openai.AsyncOpenAI(**self._client_kwargs))
        self._lock = threading.Lock()

    # -- errors -----------------------------------------------------------------------------

    def _map_error(self, error: BaseException, elapsed: float) -> BaseException:
        return map_openai_error(self, error, elapsed)


class OpenAIBackend(_ChatBackend):
    """The BPO model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, bpo serve).

    Each prompt goes to ``/v1/completions`` wrapped in the raw BPO template
    (:func:`~bpo_integrations.template.format_bpo_prompt`), the format the model was trained on,
    with no chat template on top. ``model`` is the served model's name or, on a vLLM or SGLang
    server that serves the optimizer as a LoRA adapter (``--lora-modules bpo=/path``), the LoRA
    module's name. ``api="chat"`` sends the BPO user message
    (:func:`~bpo_integrations.template.format_bpo_message`) to ``/v1/chat/completions`` instead,
    for servers that offer only a chat API; the server's chat template then adds
    ``[INST] ... [/INST]`` (the same tokens for a Llama-2 chat model such as ``THUDM/BPO``).

    ``temperature``, ``top_p``, ``max_tokens`` (``max_new_tokens``), ``seed`` and ``stop`` come
    from the :class:`GenerationSettings`; greedy settings send ``temperature=0``. The OpenAI API
    has no bad-word list or minimum length, so the aggressive mode's cut markers are sent as
    ``stop``. The client's own retries are off (``max_retries=0``): the optimizer retries within
    its latency budget. A 404 is explained by asking the server: the models and LoRA modules it
    serves (``/v1/models``), or that the URL is a TGI server's root (``/info``) or lacks ``/v1``.

    Args:
        model: the served model's name or LoRA module (``GET {base_url}/models`` lists both).
        base_url: e.g. ``"http://localhost:8000/v1"``; defaults to ``$OPENAI_BASE_URL``.
        api_key: defaults to ``$OPENAI_API_KEY``, or ``"EMPTY"`` when ``base_url`` is set.
        api: ``"completions"`` (raw BPO template) or ``"chat"`` (the server's chat template).
        timeout: request timeout in seconds; the optimizer's remaining budget caps it per call.
        max_concurrency: concurrent requests for a list of prompts.
        default_headers: extra HTTP headers for every request.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.testing.servers import ScriptedServer
        >>> rewrite = "List three uses of Python, with one example each."
        >>> with ScriptedServer(lambda raw: rewrite, model_id="THUDM/BPO", flavor="vllm") as server:
        ...     backend = OpenAIBackend("THUDM/BPO", base_url=server.url + "/v1")
        ...     BPOOptimizer(backend, timeout=10).optimize("python uses?").text
        'List three uses of Python, with one example each.'
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api: Api = "completions",
        timeout: float | None = None,
        max_concurrency: int = 16,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_concurrency=max_concurrency,
            default_headers=default_headers,
        )
        self.api = api

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api={self.api!r})"

    def prompt_text(self, prompt: str) -> str:
        return format_bpo_prompt(prompt)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": format_bpo_message(prompt)}]

    def cache_identity(self) -> Hashable:
        return ("openai", self.base_url, self.model, self.api)


class OpenAIPromptEngineerBackend(_ChatBackend):
    """A general chat model (gpt-4o, a local instruct model) acting as the prompt engineer.

    Sends ``instruction`` as the system message and the prompt, between ``<prompt>`` tags, as the
    user message. This is the BPO paper's "optimize without feedback" baseline: no BPO model
    needed, at the cost of a large model's latency and price. Settings map as in
    :class:`OpenAIBackend`.

    Args:
        model: the chat model, e.g. ``"gpt-4o-mini"``.
        instruction: the system instruction (default :data:`DEFAULT_PROMPT_ENGINEER_INSTRUCTION`).
        base_url, api_key, timeout, max_concurrency, default_headers: as in
            :class:`OpenAIBackend`.

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.testing.servers import ScriptedServer
        >>> rewrite = "Explain recursion to a beginner, with a short Python example."
        >>> with ScriptedServer(lambda message: rewrite, model_id="gpt-4o-mini") as server:
        ...     backend = OpenAIPromptEngineerBackend("gpt-4o-mini", base_url=server.url + "/v1")
        ...     BPOOptimizer(backend, timeout=10).optimize("what is recursion").text
        'Explain recursion to a beginner, with a short Python example.'
    """

    name = "openai-prompt-engineer"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        instruction: str = DEFAULT_PROMPT_ENGINEER_INSTRUCTION,
        timeout: float | None = None,
        max_concurrency: int = 16,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty system instruction")
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_concurrency=max_concurrency,
            default_headers=default_headers,
        )
        self.instruction = instruction

    def messages(self, prompt: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.instruction},
            {"role": "user", "content": f"<prompt>\n{prompt}\n</prompt>"},
        ]

    def _clean(self, text: str) -> str:
        stripped = text.strip()
        if stripped.startswith("<prompt>") and stripped.endswith("</prompt>"):
            return stripped[len("<prompt>") : -len("</prompt>")].strip()
        return text

    def cache_identity(self) -> Hashable:
        return ("openai-prompt-engineer", self.base_url, self.model, self.instruction)
