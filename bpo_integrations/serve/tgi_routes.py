"""TGI's routes: ``/generate``, ``/generate_stream``, ``/``, ``/tokenize``, ``/info``, ``/health``,
``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from bpo_integrations.serve import schemas, validation
from bpo_integrations.serve.auth import PROTECTED
from bpo_integrations.serve.engine import Completion, InputError, Prompt, SamplingParams, TokenInfo
from bpo_integrations.serve.errors import answer_errors_in_stream
from bpo_integrations.serve.metrics import CONTENT_TYPE
from bpo_integrations.serve.state import ROUTER_NAME, ServeState, ServeStateDep, version
from bpo_integrations.serve.streaming import sse, sse_stream

router = APIRouter()


def tgi_token(info: TokenInfo) -> schemas.Token:
    return schemas.Token(
        id=info.id,
        text=info.raw if info.special else info.text,
        logprob=info.logprob,
        special=info.special,
    )


def _details(
    state: ServeState, body: schemas.GenerateRequest, prompt: Prompt, completion: Completion
) -> schemas.Details:
    prefill: list[schemas.PrefillToken] = []
    if body.parameters.decoder_input_details:
        texts = state.engine.token_texts(prompt.ids)
        prefill = [
            schemas.PrefillToken(id=i, text=t, logprob=None)
            for i, t in zip(prompt.ids, texts, strict=True)
        ]
    return schemas.Details(
        finish_reason=completion.finish_reason,
        generated_tokens=completion.generated_tokens,
        seed=completion.seed,
        prefill=prefill,
        tokens=[tgi_token(t) for t in completion.tokens],
        top_tokens=None,
    )


async def _prompt_and_params(
    state: ServeState, body: schemas.GenerateRequest
) -> tuple[Prompt, SamplingParams]:
    prompt = await state.prompt_for(body.inputs, truncate=body.parameters.truncate)
    return prompt, validation.generate_params(body.parameters, prompt.ids, state.limits)


async def _generate(
    state: ServeState, request: Request, body: schemas.GenerateRequest
) -> schemas.GenerateResponse:
    prompt, params = await _prompt_and_params(state, body)
    completion = await state.run_generation(request, prompt, params)
    text = completion.text
    if body.parameters.return_full_text:
        text = body.inputs + text
    details = _details(state, body, prompt, completion) if body.parameters.details else None
    return schemas.GenerateResponse(generated_text=text, details=details)


async def _stream_events(
    state: ServeState, body: schemas.GenerateRequest, prompt: Prompt, params: SamplingParams
) -> AsyncGenerator[str, None]:
    """TGI's events: each token is sent once the next one exists, the last carries the details."""

    def event(index: int, token: TokenInfo, **final: Any) -> str:
        return sse(schemas.StreamResponse(index=index, token=tgi_token(token), **final))

    started = time.perf_counter()
    tokens: list[TokenInfo] = []
    async with aclosing(state.engine.stream(prompt, params)) as stream:
        async for item in stream:
            if isinstance(item, TokenInfo):
                if tokens:
                    yield event(len(tokens), tokens[-1])
                else:
                    state.metrics.time_to_first_token.observe(time.perf_counter() - started)
                tokens.append(item)
                continue
            state.observe(item, started)
            prefix = body.inputs if body.parameters.return_full_text else ""
            details = schemas.StreamDetails(
                finish_reason=item.finish_reason,
                generated_tokens=item.generated_tokens,
                input_length=item.input_tokens,
                seed=item.seed,
            )
            text = prefix + item.text
            yield event(len(tokens), tokens[-1], generated_text=text, details=details)


async def _generate_stream(state: ServeState, body: schemas.GenerateRequest) -> StreamingResponse:
    prompt, params = await _prompt_and_params(state, body)
    slot = state.admission.acquire()
    return sse_stream(_stream_events(state, body, prompt, params), slot)


@router.post("/generate", dependencies=PROTECTED, response_model=schemas.GenerateResponse)
async def generate_route(
    request: Request, body: schemas.GenerateRequest, state: ServeStateDep
) -> schemas.GenerateResponse:
    """Generate text for a raw prompt (TGI's ``/generate``)."""
    return await _generate(state, request, body)


@router.post("/generate_stream", dependencies=PROTECTED)
async def generate_stream_route(
    request: Request, body: schemas.GenerateRequest, state: ServeStateDep
) -> StreamingResponse:
    """Generate text token by token as server-sent events (TGI's ``/generate_stream``)."""
    answer_errors_in_stream(request)
    return await _generate_stream(state, body)


@router.post("/", dependencies=PROTECTED)
async def compat_generate_route(
    request: Request, body: schemas.CompatGenerateRequest, state: ServeStateDep
) -> Any:
    """``/generate`` (answered as a one-element list) or, with ``"stream": true``, a stream."""
    if body.stream:
        answer_errors_in_stream(request)
        return await _generate_stream(state, body)
    response = await _generate(state, request, body)
    return [response.model_dump(mode="json")]


@router.post("/tokenize", dependencies=PROTECTED, response_model=list[schemas.SimpleToken])
async def tokenize_route(
    body: schemas.GenerateRequest, state: ServeStateDep
) -> list[schemas.SimpleToken]:
    """The prompt's tokens with their character offsets (TGI's ``/tokenize``)."""
    if not body.inputs:
        raise InputError("`inputs` cannot be empty")
    prompt = await state.prompt_for(body.inputs)  # at most --max-input-tokens tokens
    spans = await asyncio.to_thread(state.engine.offsets, prompt)
    return [
        schemas.SimpleToken(id=i, text=text, start=start, stop=stop)
        for i, text, start, stop in spans
    ]


@router.get("/info", dependencies=PROTECTED, response_model=schemas.Info)
async def info_route(state: ServeStateDep) -> schemas.Info:
    """What is served and within which limits (TGI's ``/info``)."""
    limits = state.limits
    return schemas.Info(
        model_id=state.model_id,
        model_sha=None,
        model_pipeline_tag="text-generation",
        max_concurrent_requests=state.config.max_queue,
        max_best_of=1,
        max_stop_sequences=state.config.max_stop_sequences,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        validation_workers=1,
        max_client_batch_size=limits.max_client_batch_size,
        router=ROUTER_NAME,
        version=version(),
        sha=None,
        docker_label=None,
    )


@router.get("/health")
async def health_route() -> Response:
    """200 once the model is loaded (the app exists only then); never needs the API key."""
    return Response(status_code=200)


@router.get("/metrics", dependencies=PROTECTED)
async def metrics_route(state: ServeStateDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
