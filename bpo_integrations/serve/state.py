"""What every route of ``bpo serve`` shares: the engine, the limits, the metrics and admission.

One :class:`ServeState` per app, on ``app.state.serve``; routes get it with :data:`ServeStateDep`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from bpo_integrations._loop import gather
from bpo_integrations.serve import validation
from bpo_integrations.serve.admission import Admission, until_disconnected
from bpo_integrations.serve.config import ServeConfig
from bpo_integrations.serve.engine import Completion, Engine, Prompt, SamplingParams
from bpo_integrations.serve.metrics import ServeMetrics

ROUTER_NAME = "bpo-serve"


def version() -> str:
    from bpo_integrations import __version__

    return __version__


@dataclass
class ServeState:
    """The served model and what the server accepts and counts."""

    engine: Engine
    config: ServeConfig
    model_id: str
    limits: validation.Limits
    metrics: ServeMetrics
    admission: Admission
    created: int
    """When the server started (Unix seconds), as ``/v1/models`` reports it."""
    fingerprint: str
    """OpenAI's ``system_fingerprint``."""

    @classmethod
    def build(
        cls, engine: Engine, config: ServeConfig, *, model_id: str, metrics: ServeMetrics
    ) -> ServeState:
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
        return cls(
            engine=engine,
            config=config,
            model_id=model_id,
            limits=limits,
            metrics=metrics,
            admission=Admission(config.max_queue, metrics),
            created=int(time.time()),
            fingerprint=f"{version()}-{ROUTER_NAME}",
        )

    async def prompt_for(
        self, text: str, *, truncate: int | None = None, field: str = "inputs"
    ) -> Prompt:
        """``text`` tokenized (its last ``truncate`` tokens), checked against the input limit;
        tokenizing is CPU work, done off the event loop so that other requests keep answering."""
        return await asyncio.to_thread(self.prepare, text, truncate=truncate, field=field)

    def prepare(self, text: str, *, truncate: int | None = None, field: str = "inputs") -> Prompt:
        """:meth:`prompt_for`, in the calling thread.

        Tokenizing holds the GIL, so a text too long for the limits is refused, or cut to the tail
        that holds the tokens ``truncate`` keeps, before it is tokenized.
        """
        max_token_bytes = self.engine.max_token_bytes
        if truncate is None:
            validation.check_input_bytes(text, self.limits, max_token_bytes, field=field)
            prompt = self.engine.encode(text)
        else:
            keep = validation.truncate_length(truncate, self.limits)
            tail = 2 * keep * max_token_bytes
            prompt = self.engine.truncate(self.engine.encode(text[-tail:]), keep)
        validation.check_input_length(prompt.ids, self.limits, field=field)
        return prompt

    def observe(self, completion: Completion, started: float) -> None:
        """Count a finished generation in the metrics."""
        self.metrics.input_tokens.observe(completion.input_tokens)
        self.metrics.generated_tokens.observe(completion.generated_tokens)
        self.metrics.generation_duration.observe(time.perf_counter() - started)

    async def run_generations(
        self, request: Request, prompts: list[Prompt], params: list[SamplingParams]
    ) -> list[Completion]:
        """Generate for each prompt (one slot each), batched with whatever else is running."""
        slot = self.admission.acquire(len(prompts))
        started = time.perf_counter()

        async def one(prompt: Prompt, sampling: SamplingParams) -> Completion:
            completion = await self.engine.generate(prompt, sampling)
            self.observe(completion, started)
            return completion

        work = gather(*(one(p, s) for p, s in zip(prompts, params, strict=True)))
        try:
            return await until_disconnected(request, work)
        finally:
            slot.release()

    async def run_generation(
        self, request: Request, prompt: Prompt, params: SamplingParams
    ) -> Completion:
        return (await self.run_generations(request, [prompt], [params]))[0]


def serve_state(request: Request) -> ServeState:
    """The app's :class:`ServeState` (a FastAPI dependency)."""
    state = request.app.state.serve
    assert isinstance(state, ServeState)
    return state


ServeStateDep = Annotated[ServeState, Depends(serve_state)]
