"""The HTTP side of ``bpo serve``: TGI's routes and OpenAI's, on one local model.

Routes, bodies, errors and streams follow TGI's OpenAPI schema, so that TGI's clients work
unchanged: ``POST /generate``, ``/generate_stream``, ``/`` (either, by ``"stream"``),
``/tokenize``, ``/v1/chat/completions``, ``/v1/completions``; ``GET /info``, ``/health``,
``/v1/models``, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from bpo_integrations._loop import gather
from bpo_integrations.serve import schemas, validation
from bpo_integrations.serve.config import ServeConfig
from bpo_integrations.serve.engine import (
    Completion,
    Engine,
    InputError,
    Prompt,
    SamplingParams,
    TokenInfo,
)
from bpo_integrations.serve.errors import (
    ClientGone,
    InternalErrors,
    ServeError,
    answer_errors_in_stream,
    install_error_handlers,
)
from bpo_integrations.serve.limits import BodySizeLimit
from bpo_integrations.serve.metrics import CONTENT_TYPE, MetricsMiddleware, ServeMetrics

logger = logging.getLogger("bpo_integrations.serve")

T = TypeVar("T")

ROUTER_NAME = "bpo-serve"
_OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
_ROUTES = (
    "/",
    "/generate",
    "/generate_stream",
    "/tokenize",
    "/info",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
)


class _Slot:
    def __init__(self, admission: _Admission, count: int) -> None:
        self.admission = admission
        self.count = count
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= self.count
            self.admission.metrics.queue_size.set(self.admission.in_flight)


class _Admission:
    """At most ``limit`` generation requests admitted at once; the next one gets HTTP 429."""

    def __init__(self, limit: int, metrics: ServeMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self.metrics = metrics

    def acquire(self, count: int = 1) -> _Slot:
        if self.in_flight + count > self.limit:
            raise ServeError(
                429,
                "overloaded",
                f"Model is overloaded: {self.in_flight} requests in flight, the limit is "
                f"{self.limit}. Retry later, or start bpo serve with a larger --max-queue",
                headers={"Retry-After": "1"},
            )
        self.in_flight += count
        self.metrics.queue_size.set(self.in_flight)
        return _Slot(self, count)


def create_app(engine: Engine, config: ServeConfig, *, model_id: str) -> FastAPI:
    """The ``bpo serve`` app for ``engine``; run it with any ASGI server (uvicorn).

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> from bpo_integrations.backends.local import LocalBackend  # doctest: +SKIP
        >>> engine = Engine(LocalBackend())  # doctest: +SKIP
        >>> uvicorn.run(create_app(engine, ServeConfig(), model_id="smollm2"))  # doctest: +SKIP
    """
    max_input, max_total = config.resolve_limits(engine.max_positions)
    limits = validation.Limits(
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        default_max_new_tokens=config.max_new_tokens,
        max_stop_sequences=config.max_stop_sequences,
        max_client_batch_size=config.max_batch_size,
        model_id=model_id,
        adapter=config.adapter,
    )
    metrics = ServeMetrics(_ROUTES)
    admission = _Admission(config.max_queue, metrics)
    created = int(time.time())
    fingerprint = f"{_version()}-{ROUTER_NAME}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(
        title="bpo serve",
        description="Text Generation Inference's API on a local transformers model.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)  # inside the errors
    app.add_middleware(InternalErrors)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    metrics.registry.register(_BatchStats(engine))

    async def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            problem = "missing" if not header else "wrong"
            raise ServeError(
                401,
                "authentication",
                f"Unauthorized: {problem} API key. Send the server's key (bpo serve --api-key, "
                "$BPO_API_KEY) as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(require_key)]

    # -- helpers --------------------------------------------------------------------------------

    def prepare(text: str, *, truncate: int | None = None, field: str = "inputs") -> Prompt:
        prompt = engine.encode(text)
        if truncate is not None:
            prompt = engine.truncate(prompt, validation.truncate_length(truncate, limits))
        validation.check_input_length(prompt.ids, limits, field=field)
        return prompt

    async def prompt_for(
        text: str, *, truncate: int | None = None, field: str = "inputs"
    ) -> Prompt:
        # tokenizing is CPU work: off the event loop, so /health and the streams keep answering
        return await asyncio.to_thread(prepare, text, truncate=truncate, field=field)

    def observe(completion: Completion, started: float) -> None:
        metrics.input_tokens.observe(completion.input_tokens)
        metrics.generated_tokens.observe(completion.generated_tokens)
        metrics.generation_duration.observe(time.perf_counter() - started)

    async def run_generations(
        request: Request, prompts: list[Prompt], params: list[SamplingParams]
    ) -> list[Completion]:
        """Generate for each prompt (one slot each), batched with whatever else is running."""
        slot = admission.acquire(len(prompts))
        started = time.perf_counter()

        async def one(prompt: Prompt, sampling: SamplingParams) -> Completion:
            completion = await engine.generate(prompt, sampling)
            observe(completion, started)
            return completion

        work = gather(*(one(p, s) for p, s in zip(prompts, params, strict=True)))
        try:
            return await _until_disconnected(request, work)
        finally:
            slot.release()

    async def run_generation(
        request: Request, prompt: Prompt, params: SamplingParams
    ) -> Completion:
        return (await run_generations(request, [prompt], [params]))[0]

    def sse_stream(
        events: AsyncGenerator[str, None], slot: _Slot, *, done: bool = False
    ) -> StreamingResponse:
        """Stream ``events``; however the stream ends, the generation stops and the slot frees."""

        async def body() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
            except Exception as error:  # the status line is sent: report in the stream, as TGI
                logger.exception("generation failed in a stream")
                message = f"Request failed during generation: {type(error).__name__}: {error}"
                yield _sse({"error": message, "error_type": "generation"})
            finally:
                slot.release()
            if done:
                yield "data: [DONE]\n\n"

        stream = body()

        async def cleanup() -> None:
            # a client that disconnects leaves both generators suspended: close them now
            slot.release()
            await stream.aclose()
            await events.aclose()

        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(cleanup),
        )

    def tgi_token(info: TokenInfo) -> schemas.Token:
        return schemas.Token(
            id=info.id,
            text=info.raw if info.special else info.text,
            logprob=info.logprob,
            special=info.special,
        )

    # -- TGI routes -----------------------------------------------------------------------------

    def generate_response(
        body: schemas.GenerateRequest, prompt: Prompt, completion: Completion
    ) -> schemas.GenerateResponse:
        parameters = body.parameters
        text = completion.text
        if parameters.return_full_text:
            text = body.inputs + text
        details = None
        if parameters.details:
            prefill: list[schemas.PrefillToken] = []
            if parameters.decoder_input_details:
                prefill = [
                    schemas.PrefillToken(id=i, text=t, logprob=None)
                    for i, t in zip(prompt.ids, engine.token_texts(prompt.ids), strict=True)
                ]
            details = schemas.Details(
                finish_reason=completion.finish_reason,
                generated_tokens=completion.generated_tokens,
                seed=completion.seed,
                prefill=prefill,
                tokens=[tgi_token(t) for t in completion.tokens],
                top_tokens=None,
            )
        return schemas.GenerateResponse(generated_text=text, details=details)

    async def generate(request: Request, body: schemas.GenerateRequest) -> schemas.GenerateResponse:
        prompt = await prompt_for(body.inputs, truncate=body.parameters.truncate)
        params = validation.generate_params(body.parameters, prompt.ids, limits)
        completion = await run_generation(request, prompt, params)
        return generate_response(body, prompt, completion)

    async def generate_stream(body: schemas.GenerateRequest) -> StreamingResponse:
        prompt = await prompt_for(body.inputs, truncate=body.parameters.truncate)
        params = validation.generate_params(body.parameters, prompt.ids, limits)
        slot = admission.acquire()

        def event(index: int, token: TokenInfo, **final: Any) -> str:
            return _sse(schemas.StreamResponse(index=index, token=tgi_token(token), **final))

        async def events() -> AsyncGenerator[str, None]:
            # each token is sent once the next one exists: TGI's last event carries the details
            started = time.perf_counter()
            tokens: list[TokenInfo] = []
            async with aclosing(engine.stream(prompt, params)) as stream:
                async for item in stream:
                    if isinstance(item, TokenInfo):
                        if tokens:
                            yield event(len(tokens), tokens[-1])
                        else:
                            metrics.time_to_first_token.observe(time.perf_counter() - started)
                        tokens.append(item)
                        continue
                    observe(item, started)
                    prefix = body.inputs if body.parameters.return_full_text else ""
                    details = schemas.StreamDetails(
                        finish_reason=item.finish_reason,
                        generated_tokens=item.generated_tokens,
                        input_length=item.input_tokens,
                        seed=item.seed,
                    )
                    text = prefix + item.text
                    yield event(len(tokens), tokens[-1], generated_text=text, details=details)

        return sse_stream(events(), slot)

    @app.post("/generate", dependencies=protected, response_model=schemas.GenerateResponse)
    async def generate_route(
        request: Request, body: schemas.GenerateRequest
    ) -> schemas.GenerateResponse:
        """Generate text for a raw prompt (TGI's ``/generate``)."""
        return await generate(request, body)

    @app.post("/generate_stream", dependencies=protected)
    async def generate_stream_route(
        request: Request, body: schemas.GenerateRequest
    ) -> StreamingResponse:
        """Generate text token by token as server-sent events (TGI's ``/generate_stream``)."""
        answer_errors_in_stream(request)
        return await generate_stream(body)

    @app.post("/", dependencies=protected)
    async def compat_generate_route(request: Request, body: schemas.CompatGenerateRequest) -> Any:
        """``/generate`` (answered as a one-element list) or, with ``"stream": true``, a stream."""
        if body.stream:
            answer_errors_in_stream(request)
            return await generate_stream(body)
        response = await generate(request, body)
        return [response.model_dump(mode="json")]

    @app.post("/tokenize", dependencies=protected, response_model=list[schemas.SimpleToken])
    async def tokenize_route(body: schemas.GenerateRequest) -> list[schemas.SimpleToken]:
        """The prompt's tokens with their character offsets (TGI's ``/tokenize``)."""
        if not body.inputs:
            raise InputError("`inputs` cannot be empty")
        prompt = await prompt_for(body.inputs)  # at most --max-input-tokens tokens
        spans = await asyncio.to_thread(engine.offsets, prompt)
        return [
            schemas.SimpleToken(id=i, text=text, start=start, stop=stop)
            for i, text, start, stop in spans
        ]

    @app.get("/info", dependencies=protected, response_model=schemas.Info)
    async def info_route() -> schemas.Info:
        """What is served and within which limits (TGI's ``/info``)."""
        return schemas.Info(
            model_id=model_id,
            model_sha=None,
            model_pipeline_tag="text-generation",
            max_concurrent_requests=config.max_queue,
            max_best_of=1,
            max_stop_sequences=config.max_stop_sequences,
            max_input_tokens=limits.max_input_tokens,
            max_total_tokens=limits.max_total_tokens,
            validation_workers=1,
            max_client_batch_size=limits.max_client_batch_size,
            router=ROUTER_NAME,
            version=_version(),
            sha=None,
            docker_label=None,
        )

    @app.get("/health")
    async def health_route() -> Response:
        """200 once the model is loaded (the app exists only then); never needs the API key."""
        return Response(status_code=200)

    @app.get("/metrics", dependencies=protected)
    async def metrics_route() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- OpenAI routes --------------------------------------------------------------------------

    @app.get("/v1/models", dependencies=protected, response_model=schemas.ModelList)
    async def models_route() -> schemas.ModelList:
        """The one served model, as OpenAI's model list."""
        return schemas.ModelList(
            data=[schemas.ModelInfo(id=model_id, created=created, owned_by=ROUTER_NAME)]
        )

    def chat_logprobs(tokens: list[TokenInfo]) -> schemas.ChatCompletionLogprobs:
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

    def usage(completion: Completion) -> schemas.Usage:
        return schemas.Usage(
            prompt_tokens=completion.input_tokens,
            completion_tokens=completion.generated_tokens,
            total_tokens=completion.input_tokens + completion.generated_tokens,
        )

    @app.post("/v1/chat/completions", dependencies=protected)
    async def chat_route(request: Request, body: schemas.ChatRequest) -> Any:
        """OpenAI's chat completions, with the model's chat template (TGI's Messages API)."""
        messages = validation.chat_messages(body.messages)
        rendered = await asyncio.to_thread(engine.chat_prompt, messages)
        prompt = await prompt_for(rendered, field="messages")
        params = validation.chat_params(body, prompt.ids, limits)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())

        def chunk(choices: list[schemas.ChatCompletionChoice], **extra: Any) -> str:
            return _sse(
                schemas.ChatCompletionChunk(
                    id=completion_id,
                    created=now,
                    model=model_id,
                    system_fingerprint=fingerprint,
                    choices=choices,
                    **extra,
                )
            )

        if body.stream:
            slot = admission.acquire()
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncGenerator[str, None]:
                started = time.perf_counter()
                first = True
                async with aclosing(engine.stream(prompt, params)) as tokens:
                    async for event in tokens:
                        if isinstance(event, TokenInfo):
                            if first:
                                metrics.time_to_first_token.observe(time.perf_counter() - started)
                                first = False
                            if event.special:
                                continue
                            yield chunk(
                                [
                                    schemas.ChatCompletionChoice(
                                        index=0,
                                        delta=schemas.TextMessage(content=event.text),
                                        logprobs=chat_logprobs([event]) if body.logprobs else None,
                                    )
                                ]
                            )
                            continue
                        observe(event, started)
                        last = schemas.ChatCompletionChoice(
                            index=0,
                            delta=schemas.TextMessage(content=""),
                            finish_reason=_OPENAI_FINISH[event.finish_reason],
                        )
                        yield chunk([last])
                        if include_usage:
                            yield chunk([], usage=usage(event))

            return sse_stream(events(), slot, done=True)

        completion = await run_generation(request, prompt, params)
        return schemas.ChatCompletion(
            id=completion_id,
            created=now,
            model=model_id,
            system_fingerprint=fingerprint,
            choices=[
                schemas.ChatCompletionComplete(
                    index=0,
                    message=schemas.TextMessage(content=completion.text_before_stop()),
                    logprobs=chat_logprobs(completion.tokens) if body.logprobs else None,
                    finish_reason=_OPENAI_FINISH[completion.finish_reason],
                )
            ],
            usage=usage(completion),
        ).model_dump(mode="json")

    @app.post("/v1/completions", dependencies=protected)
    async def completions_route(request: Request, body: schemas.CompletionRequest) -> Any:
        """OpenAI's legacy completions: raw prompts, no chat template."""
        texts = validation.completion_prompts(body, limits)
        prompts = [await prompt_for(text, field="prompt") for text in texts]
        all_params = [validation.completion_params(body, p.ids, limits) for p in prompts]
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        header = {
            "id": completion_id,
            "created": now,
            "model": model_id,
            "system_fingerprint": fingerprint,
        }
        if body.stream:
            if len(prompts) > 1:
                raise InputError("streaming takes one `prompt`: send the others separately")
            slot = admission.acquire()

            async def events() -> AsyncGenerator[str, None]:
                started = time.perf_counter()
                async with aclosing(engine.stream(prompts[0], all_params[0])) as tokens:
                    async for event in tokens:
                        if isinstance(event, TokenInfo):
                            if not event.special:
                                choice = schemas.CompletionStreamChoice(index=0, text=event.text)
                                yield _sse(schemas.CompletionChunk(**header, choices=[choice]))
                            continue
                        observe(event, started)
                        choice = schemas.CompletionStreamChoice(
                            index=0, text="", finish_reason=_OPENAI_FINISH[event.finish_reason]
                        )
                        yield _sse(schemas.CompletionChunk(**header, choices=[choice]))

            return sse_stream(events(), slot, done=True)

        completions = await run_generations(request, prompts, all_params)
        return schemas.CompletionFinal(
            **header,
            choices=[
                schemas.CompletionComplete(
                    index=index,
                    text=completion.text_before_stop(),
                    finish_reason=_OPENAI_FINISH[completion.finish_reason],
                )
                for index, completion in enumerate(completions)
            ],
            usage=schemas.Usage(
                prompt_tokens=sum(c.input_tokens for c in completions),
                completion_tokens=sum(c.generated_tokens for c in completions),
                total_tokens=sum(c.input_tokens + c.generated_tokens for c in completions),
            ),
        ).model_dump(mode="json")

    return app


# -- module helpers -------------------------------------------------------------------------------


def _version() -> str:
    from bpo_integrations import __version__

    return __version__


def _sse(data: BaseModel | dict[str, Any]) -> str:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {payload}\n\n"


class _BatchStats:
    """A Prometheus collector over the engine's counters, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.engine.stats
        steps = CounterMetricFamily(
            "bpo_serve_engine_steps", "Scheduler steps the engine ran (each decodes every request)."
        )
        steps.add_metric([], stats.get("steps", 0))
        requests = CounterMetricFamily("bpo_serve_engine_requests", "Requests given to the engine.")
        requests.add_metric([], stats.get("requests", 0))
        generated = CounterMetricFamily(
            "bpo_serve_engine_generated_tokens", "Tokens the engine generated."
        )
        generated.add_metric([], stats.get("generated_tokens", 0))
        largest = GaugeMetricFamily(
            "bpo_serve_max_batch_size", "The most requests the engine decoded together so far."
        )
        largest.add_metric([], stats.get("max_running", 0))
        yield from (steps, requests, generated, largest)

    def describe(self) -> list[Any]:
        return []


async def _until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (freeing its slot).

    ``work`` is a coroutine (for many generations, :func:`~bpo_integrations._loop.gather`), run as
    a task, which retrieves what it awaited when it is cancelled.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or not task.done():
        raise ClientGone()
    return task.result()
