"""Request and response bodies of ``bpo serve``, mirroring TGI's published OpenAPI schema.

Field names, types, bounds and defaults follow TGI's ``components.schemas`` one to one, so that
``huggingface_hub.InferenceClient``, the ``openai`` client and this project's ``tgi`` and
``openai`` backends talk to ``bpo serve`` exactly as they talk to TGI. Requests are parsed
strictly, as TGI's serde does: ``"5"`` is not an integer and ``1`` is not a boolean.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bpo_integrations.settings import FinishReason

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _omitted_when_none() -> Any:
    """An optional field left out of the JSON when unset (TGI's ``skip_serializing_if``)."""
    return Field(default=None, exclude_if=lambda value: value is None)


# -- TGI: /generate, /generate_stream, / ---------------------------------------------------------


class GenerateParameters(_Request):
    """TGI's ``GenerateParameters``; how each one is honoured is documented on ``bpo serve``."""

    adapter_id: str | None = None
    best_of: int | None = Field(default=None, gt=0, le=_INT32_MAX)
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = Field(default=None, gt=-2.0, le=2.0)
    grammar: dict[str, Any] | None = None
    max_new_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    return_full_text: bool | None = None
    seed: int | None = Field(default=None, ge=0, le=_UINT64_MAX)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = Field(default=None, gt=0.0)
    top_k: int | None = Field(default=None, gt=0, le=_INT32_MAX)
    top_n_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    truncate: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    typical_p: float | None = Field(default=None, gt=0.0, le=1.0)
    watermark: bool = False


class GenerateRequest(_Request):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class CompatGenerateRequest(GenerateRequest):
    """The body of ``POST /``: ``/generate`` or, with ``"stream": true``, ``/generate_stream``."""

    stream: bool = False


class PrefillToken(_Response):
    id: int
    text: str
    logprob: float | None


class Token(_Response):
    id: int
    text: str
    logprob: float | None
    special: bool


class Details(_Response):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = _omitted_when_none()


class GenerateResponse(_Response):
    generated_text: str
    details: Details | None = _omitted_when_none()


class StreamDetails(_Response):
    finish_reason: FinishReason
    generated_tokens: int
    input_length: int
    seed: int | None


class StreamResponse(_Response):
    index: int
    token: Token
    top_tokens: list[Token] | None = _omitted_when_none()
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(_Response):
    error: str
    error_type: str


class Info(_Response):
    model_id: str
    model_sha: str | None
    model_pipeline_tag: str | None
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None


class SimpleToken(_Response):
    id: int
    text: str
    start: int
    stop: int


# -- OpenAI: /v1/chat/completions, /v1/completions, /v1/models -------------------------------------


class TextChunk(_Request):
    type: Literal["text"]
    text: str


class Url(_Request):
    url: str


class ImageChunk(_Request):
    type: Literal["image_url"]
    image_url: Url


class Message(_Request):
    """A chat message: ``content`` is a string or a list of text (and image) chunks."""

    role: str
    content: str | list[TextChunk | ImageChunk] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    """TGI's ``ChatRequest`` (OpenAI's chat completion request)."""

    messages: list[Message]
    model: str | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: list[float] | dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    max_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    n: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    response_format: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=0, le=_UINT64_MAX)
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tool_choice: str | dict[str, Any] | None = None
    tool_prompt: str | None = None
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(_Request):
    """TGI's ``CompletionRequest`` (OpenAI's legacy completions): a raw prompt, no template."""

    prompt: str | list[str]
    model: str | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    max_tokens: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    seed: int | None = Field(default=None, ge=0, le=_UINT64_MAX)
    stop: list[str] | str | None = None
    stream: bool = False
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionTopLogprob(_Response):
    token: str
    logprob: float


class ChatCompletionLogprob(_Response):
    token: str
    logprob: float
    top_logprobs: list[ChatCompletionTopLogprob]


class ChatCompletionLogprobs(_Response):
    content: list[ChatCompletionLogprob]


class TextMessage(_Response):
    role: str = "assistant"
    content: str


class ChatCompletionComplete(_Response):
    index: int
    message: TextMessage
    logprobs: ChatCompletionLogprobs | None = None
    finish_reason: str


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionComplete]
    usage: Usage


class ChatCompletionChoice(_Response):
    index: int
    delta: TextMessage
    logprobs: ChatCompletionLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class CompletionComplete(_Response):
    index: int
    text: str
    logprobs: list[float] | None = None
    finish_reason: str


class CompletionFinal(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionComplete]
    usage: Usage


class CompletionStreamChoice(_Response):
    """A streamed completion choice: ``finish_reason`` is null until the last chunk, as OpenAI's."""

    index: int
    text: str
    logprobs: list[float] | None = None
    finish_reason: str | None = None


class CompletionChunk(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionStreamChoice]


class ModelInfo(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Response):
    """What TGI's ``/v1/models`` really returns (its schema names only the item, ``ModelInfo``)."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]
