"""OpenAI's routes (TGI's Messages API): ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from bpo_integrations.serve import schemas, validation
from bpo_integrations.serve.auth import PROTECTED
from bpo_integrations.serve.engine import Completion, InputError, Prompt, SamplingParams, TokenInfo
from bpo_integrations.serve.state import ROUTER_NAME, ServeState, ServeStateDep
from bpo_integrations.serve.streaming import sse, sse_stream

router = APIRouter()

_OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass(frozen=True)
class _Header:
    """What every chunk (and the answer) of one completion repeats."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    @classmethod
    def new(cls, state: ServeState, prefix: str) -> _Header:
        return cls(
            id=f"{prefix}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=state.model_id,
            system_fingerprint=state.fingerprint,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }


def _chat_logprobs(tokens: list[TokenInfo]) -> schemas.ChatCompletionLogprobs:
    return schemas.ChatCompletionLogprobs(
        content=[
            schemas.ChatCompletionLogprob(
                token=t.text,
                logprob=t.logprob if t.logprob is not None else 0.0,
                top_logprobs=[],
            )
            for t in tokens
            if not t.special
        ]
    )


def _usage(completions: list[Completion]) -> schemas.Usage:
    prompt_tokens = sum(c.input_tokens for c in completions)
    completion_tokens = sum(c.generated_tokens for c in completions)
    return schemas.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@router.get("/v1/models", dependencies=PROTECTED, response_model=schemas.ModelList)
async def models_route(state: ServeStateDep) -> schemas.ModelList:
    """The one served model, as OpenAI's model list."""
    return schemas.ModelList(
        data=[schemas.ModelInfo(id=state.model_id, created=state.created, owned_by=ROUTER_NAME)]
    )


# -- chat -----------------------------------------------------------------------------------------


async def _chat_events(
    state: ServeState,
    body: schemas.ChatRequest,
    prompt: Prompt,
    params: SamplingParams,
    header: _Header,
) -> AsyncGenerator[str, None]:
    def chunk(choices: list[schemas.ChatCompletionChoice], **extra: Any) -> str:
        return sse(schemas.ChatCompletionChunk(**header.fields(), choices=choices, **extra))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    started = time.perf_counter()
    first = True
    async with aclosing(state.engine.stream(prompt, params)) as tokens:
        async for event in tokens:
            if isinstance(event, TokenInfo):
                if first:
                    state.metrics.time_to_first_token.observe(time.perf_counter() - started)
                    first = False
                if event.special:
                    continue
                choice = schemas.ChatCompletionChoice(
                    index=0,
                    delta=schemas.TextMessage(content=event.text),
                    logprobs=_chat_logprobs([event]) if body.logprobs else None,
                )
                yield chunk([choice])
                continue
            state.observe(event, started)
            last = schemas.ChatCompletionChoice(
                index=0,
                delta=schemas.TextMessage(content=""),
                finish_reason=_OPENAI_FINISH[event.finish_reason],
            )
            yield chunk([last])
            if include_usage:
                yield chunk([], usage=_usage([event]))


@router.post("/v1/chat/completions", dependencies=PROTECTED)
async def chat_route(request: Request, body: schemas.ChatRequest, state: ServeStateDep) -> Any:
    """OpenAI's chat completions, with the model's chat template (TGI's Messages API)."""
    messages = validation.chat_messages(body.messages)
    rendered = await asyncio.to_thread(state.engine.chat_prompt, messages)
    prompt = await state.prompt_for(rendered, field="messages")
    params = validation.chat_params(body, prompt.ids, state.limits)
    header = _Header.new(state, "chatcmpl")
    if body.stream:
        slot = state.admission.acquire()
        return sse_stream(_chat_events(state, body, prompt, params, header), slot, done=True)
    completion = await state.run_generation(request, prompt, params)
    return schemas.ChatCompletion(
        **header.fields(),
        choices=[
            schemas.ChatCompletionComplete(
                index=0,
                message=schemas.TextMessage(content=completion.text_before_stop),
                logprobs=_chat_logprobs(completion.tokens) if body.logprobs else None,
                finish_reason=_OPENAI_FINISH[completion.finish_reason],
            )
        ],
        usage=_usage([completion]),
    ).model_dump(mode="json")


# -- legacy completions ---------------------------------------------------------------------------


async def _completion_events(
    state: ServeState, prompt: Prompt, params: SamplingParams, header: _Header
) -> AsyncGenerator[str, None]:
    def chunk(text: str, finish_reason: str | None) -> str:
        choice = schemas.CompletionStreamChoice(index=0, text=text, finish_reason=finish_reason)
        return sse(schemas.CompletionChunk(**header.fields(), choices=[choice]))

    started = time.perf_counter()
    async with aclosing(state.engine.stream(prompt, params)) as tokens:
        async for event in tokens:
            if isinstance(event, TokenInfo):
                if not event.special:
                    yield chunk(event.text, None)
                continue
            state.observe(event, started)
            yield chunk("", _OPENAI_FINISH[event.finish_reason])


@router.post("/v1/completions", dependencies=PROTECTED)
async def completions_route(
    request: Request, body: schemas.CompletionRequest, state: ServeStateDep
) -> Any:
    """OpenAI's legacy completions: raw prompts, no chat template."""
    texts = validation.completion_prompts(body, state.limits)
    prompts = [await state.prompt_for(text, field="prompt") for text in texts]
    all_params = [validation.completion_params(body, p.ids, state.limits) for p in prompts]
    header = _Header.new(state, "cmpl")
    if body.stream:
        if len(prompts) > 1:
            raise InputError("streaming takes one `prompt`: send the others separately")
        slot = state.admission.acquire()
        events = _completion_events(state, prompts[0], all_params[0], header)
        return sse_stream(events, slot, done=True)
    completions = await state.run_generations(request, prompts, all_params)
    return schemas.CompletionFinal(
        **header.fields(),
        choices=[
            schemas.CompletionComplete(
                index=index,
                text=completion.text_before_stop,
                finish_reason=_OPENAI_FINISH[completion.finish_reason],
            )
            for index, completion in enumerate(completions)
        ],
        usage=_usage(completions),
    ).model_dump(mode="json")
