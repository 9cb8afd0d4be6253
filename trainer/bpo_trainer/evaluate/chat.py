"""Clients of the answering model and the judge: an OpenAI-compatible endpoint, TGI (through
``huggingface_hub``'s ``chat_completion``), or a local transformers model with its chat template.

Every client raises the errors of :mod:`bpo_integrations.errors`: ``TransientBackendError`` (HTTP
408/429/5xx, a malformed answer; with the server's ``Retry-After``) and ``BackendUnavailableError``
(connection refused or dropped) are retried by the pipeline, ``BackendError`` is not.
"""

from __future__ import annotations

import asyncio
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bpo_integrations.clients import PerLoopClients, aclose_on_their_loops
from bpo_integrations.errors import BackendError, BackendUnavailableError, TransientBackendError
from bpo_integrations.retry import parse_retry_after
from bpo_trainer.retry import BULK_STATUS

if TYPE_CHECKING:
    from bpo_trainer.evaluate.config import EvalConfig

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """How a chat model decodes one request. ``max_tokens=None`` leaves it to the server."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class ChatReply:
    """The model's answer; token counts are ``None`` where the endpoint reports no usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def answer_fields(self) -> dict[str, Any]:
        """The fields of an answer record: the answer, why it ended, and its tokens."""
        return {
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


async def _close(client: Any) -> None:
    await client.close()


def _reply_from_completion(completion: Any, where: str) -> ChatReply:
    """The first choice of an OpenAI-shaped chat completion (openai's or huggingface_hub's)."""
    if not completion.choices:
        raise TransientBackendError(f"{where} answered no choices")
    choice = completion.choices[0]
    usage = completion.usage
    return ChatReply(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


class ChatModel(ABC):
    """A chat model that answers a list of messages."""

    name: str = "chat"

    @abstractmethod
    async def achat(
        self, messages: Sequence[Message], params: SamplingParams, *, timeout: float | None = None
    ) -> ChatReply:
        """One completion of ``messages``."""

    @abstractmethod
    def identity(self) -> Hashable:
        """What distinguishes this model's outputs (kind, endpoint, model) in the step caches."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or the loaded model."""


class OpenAIChat(ChatModel):
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp).

    Example:
        >>> from bpo_integrations.testing.servers import ScriptedServer
        >>> with ScriptedServer(lambda text: "Paris.") as server:
        ...     chat = OpenAIChat(server.url + "/v1", "scripted-bpo")
        ...     reply = asyncio.run(chat.achat([{"role": "user", "content": "Capital?"}],
        ...                                    SamplingParams(max_tokens=8)))
        >>> reply.text, reply.completion_tokens
        ('Paris.', 1)
    """

    name = "openai"

    def __init__(
        self, base_url: str | None, model: str, *, api_key: str = "EMPTY", timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self._clients = PerLoopClients(self._make_client)

    def identity(self) -> Hashable:
        return ("openai", self.base_url or "https://api.openai.com/v1", self.model)

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout
        )

    async def achat(
        self, messages: Sequence[Message], params: SamplingParams, *, timeout: float | None = None
    ) -> ChatReply:
        import openai

        client = self._clients.get()
        kwargs: dict[str, Any] = {"temperature": params.temperature}
        if params.max_tokens is not None:
            kwargs["max_tokens"] = params.max_tokens
        if params.top_p < 1:
            kwargs["top_p"] = params.top_p
        if params.seed is not None:
            kwargs["seed"] = params.seed
        where = f"{self.model} at {self.base_url or 'api.openai.com'}"
        try:
            response = await client.chat.completions.create(
                model=self.model, messages=list(messages), timeout=timeout or self.timeout, **kwargs
            )
        except openai.APIStatusError as error:
            status = error.status_code
            text = f"{where} answered HTTP {status}: {error.message}"
            if status in BULK_STATUS:
                retry_after = parse_retry_after(error.response.headers.get("retry-after"))
                raise TransientBackendError(text, retry_after=retry_after) from error
            if status in (401, 403):
                text += " (set the variable named by answer_api_key_env / judge_api_key_env)"
            raise BackendError(text) from error
        except openai.APITimeoutError as error:
            raise TransientBackendError(f"{where} timed out") from error
        except openai.APIConnectionError as error:
            raise BackendUnavailableError(f"cannot reach {where}: {error}") from error
        except (json.JSONDecodeError, openai.APIResponseValidationError) as error:
            raise TransientBackendError(f"{where} answered malformed JSON: {error}") from error
        return _reply_from_completion(response, where)

    async def aclose(self) -> None:
        await aclose_on_their_loops(self._clients.drain(), _close)


class TGIChat(ChatModel):
    """A model served by Text Generation Inference, through ``huggingface_hub``'s
    ``AsyncInferenceClient.chat_completion`` (TGI's Messages API).

    TGI applies the model's chat template. ``top_p`` is sent only below 1 (TGI rejects 1.0).
    With ``HF_HUB_OFFLINE=1`` ``huggingface_hub`` refuses every request: unset it for this process.
    """

    name = "tgi"

    def __init__(
        self,
        url: str,
        model: str = "tgi",
        *,
        token: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.token = token
        self.timeout = timeout
        self._clients = PerLoopClients(self._make_client)

    def identity(self) -> Hashable:
        return ("tgi", self.url, self.model)

    def _make_client(self) -> Any:
        from huggingface_hub import AsyncInferenceClient

        return AsyncInferenceClient(base_url=self.url, api_key=self.token, timeout=self.timeout)

    async def achat(
        self, messages: Sequence[Message], params: SamplingParams, *, timeout: float | None = None
    ) -> ChatReply:
        import httpx2
        from huggingface_hub.errors import (
            HfHubHTTPError,
            InferenceTimeoutError,
            OfflineModeIsEnabled,
        )

        client = self._clients.get()
        where = f"TGI at {self.url}"
        try:
            output = await asyncio.wait_for(
                client.chat_completion(
                    list(messages),
                    model=self.model,
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p if params.top_p < 1 else None,
                    seed=params.seed,
                ),
                timeout=timeout or self.timeout,
            )
        except OfflineModeIsEnabled as error:
            raise BackendError(
                f"huggingface_hub's offline mode (HF_HUB_OFFLINE=1) blocks every request, even to "
                f"{where}: unset HF_HUB_OFFLINE, or use the 'openai' backend on {self.url}/v1"
            ) from error
        except HfHubHTTPError as error:
            status = error.response.status_code
            text = f"{where} answered HTTP {status}: {str(error).splitlines()[-1]}"
            if status in BULK_STATUS:
                retry_after = parse_retry_after(error.response.headers.get("retry-after"))
                raise TransientBackendError(text, retry_after=retry_after) from error
            raise BackendError(text) from error
        except (InferenceTimeoutError, asyncio.TimeoutError) as error:
            raise TransientBackendError(f"{where} timed out") from error
        except httpx2.TransportError as error:
            raise BackendUnavailableError(f"cannot reach {where}: {error!r}") from error
        except json.JSONDecodeError as error:
            raise TransientBackendError(f"{where} answered malformed JSON: {error}") from error
        return _reply_from_completion(output, where)

    async def aclose(self) -> None:
        await aclose_on_their_loops(self._clients.drain(), _close)


class LocalChat(ChatModel):
    """A transformers causal LM on this machine, prompted with its tokenizer's chat template.

    Generation runs in a worker thread, one request at a time. Needs the ``local`` extra.

    Example:
        >>> chat = LocalChat("meta-llama/Llama-2-7b-chat-hf")
        >>> reply = asyncio.run(chat.achat([{"role": "user", "content": "Hi"}],
        ...                                SamplingParams(max_tokens=32, temperature=0.7)))
        ...  # doctest: +SKIP
    """

    name = "local"

    def __init__(self, model: str, *, device: str | None = None) -> None:
        self.model_name = model
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def identity(self) -> Hashable:
        return ("local", self.model_name)

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        if tokenizer.chat_template is None:
            raise BackendError(
                f"{self.model_name} has no chat template: use a chat model, or serve it behind an "
                "OpenAI-compatible server that formats the prompt"
            )
        model = AutoModelForCausalLM.from_pretrained(self.model_name).to(device).eval()
        self._tokenizer, self._model = tokenizer, model

    def _generate(self, messages: Sequence[Message], params: SamplingParams) -> ChatReply:
        import torch

        with self._lock:
            self._load()
            tokenizer, model = self._tokenizer, self._model
            inputs = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(model.device)
            sample = params.temperature > 0
            kwargs: dict[str, Any] = {
                "max_new_tokens": params.max_tokens or 512,
                "do_sample": sample,
                "pad_token_id": tokenizer.eos_token_id
                if tokenizer.pad_token_id is None
                else tokenizer.pad_token_id,
            }
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                output = model.generate(**inputs, **kwargs)
            prompt_length = inputs["input_ids"].shape[1]
            new_tokens = output[0][prompt_length:]
            text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
            ended = len(new_tokens) > 0 and int(new_tokens[-1]) == tokenizer.eos_token_id
            return ChatReply(
                text=text,
                finish_reason="stop" if ended else "length",
                prompt_tokens=int(prompt_length),
                completion_tokens=len(new_tokens),
            )

    async def achat(
        self, messages: Sequence[Message], params: SamplingParams, *, timeout: float | None = None
    ) -> ChatReply:
        return await asyncio.to_thread(self._generate, messages, params)


def build_chat_model(config: EvalConfig, role: str) -> ChatModel:
    """The answering (``role="answer"``) or judge (``role="judge"``) model of ``config``."""
    backend = getattr(config, f"{role}_backend")
    url = getattr(config, f"{role}_url")
    model = getattr(config, f"{role}_model")
    if backend == "openai":
        return OpenAIChat(url, model, api_key=config.api_key(role), timeout=config.request_timeout)
    if backend == "tgi":
        key = config.api_key(role)
        return TGIChat(
            url,
            model or "tgi",
            token=None if key == "EMPTY" else key,
            timeout=config.request_timeout,
        )
    return LocalChat(model)
