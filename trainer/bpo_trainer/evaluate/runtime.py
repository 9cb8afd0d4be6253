"""The machinery of a stage that makes many model calls: rate limits, retries, token and cost
counters, and step files that make a run resumable.

A step appends one JSONL record per finished call, keyed by a hash of what determines it;
``records_by_key`` reads them back, so a re-run replays finished work instead of calling again
(:meth:`RunState.chat_step` is such a step for a list of chat calls). Shared by the BPO
evaluation (:mod:`bpo_trainer.evaluate.pipeline`) and the DRPO stages.

Example:
    >>> import asyncio
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Retries:
    ...     max_retries: int = 2
    ...     retry_max_wait: float = 1.0
    >>> run = RunState(Retries(), out=Path("."), progress=None,
    ...                usage={"judge": Usage()}, total={"judge": Usage()},
    ...                new_calls={"judge": 0}, failures={"judge": 0})
    >>> async def judge() -> str:
    ...     return "[[A]]"
    >>> asyncio.run(run.call(CallLimiter(concurrency=4, rate=None), judge))
    '[[A]]'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from bpo_integrations.jsonl import JsonlWriter, read_jsonl
from bpo_integrations.retry import RetryPolicy
from bpo_trainer.retry import is_transient

if TYPE_CHECKING:
    from rich.progress import Progress

    from bpo_trainer.evaluate.chat import ChatModel, ChatReply, SamplingParams

__all__ = [
    "CallLimiter",
    "ChatJob",
    "RetrySettings",
    "RunState",
    "StepSettings",
    "Usage",
    "chat_models",
    "progress_bar",
    "records_by_key",
    "run_blocking",
]

logger = logging.getLogger("bpo_trainer.evaluate")
T = TypeVar("T")


class RetrySettings(Protocol):
    """What :meth:`RunState.call` reads of a stage's config."""

    max_retries: int
    retry_max_wait: float


class StepSettings(RetrySettings, Protocol):
    """What :meth:`RunState.chat_step` reads of a stage's config."""

    concurrency: int
    requests_per_second: float | None
    request_timeout: float


C = TypeVar("C", bound=RetrySettings)
I = TypeVar("I")  # noqa: E741 - the item a chat job is made for


@dataclass(frozen=True)
class ChatJob(Generic[I]):
    """One call of a step: its cache key, the messages to send, and the item it is made for."""

    key: str
    messages: list[dict[str, str]]
    item: I


class CallLimiter:
    """At most ``concurrency`` calls in flight, and at most ``rate`` call starts a second."""

    def __init__(self, concurrency: int, rate: float | None) -> None:
        self._semaphore = asyncio.Semaphore(concurrency)
        self._interval = 1.0 / rate if rate else 0.0
        self._next_start = 0.0
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            if self._interval:
                async with self._lock:
                    now = time.monotonic()
                    delay = max(0.0, self._next_start - now)
                    self._next_start = max(now, self._next_start) + self._interval
                if delay:
                    await asyncio.sleep(delay)
            yield


@dataclass
class Usage:
    """Calls, tokens and cost (prices in USD per million tokens) of one model."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: int = 0
    price_input: float = 0.0
    price_output: float = 0.0

    @classmethod
    def priced(cls, config: Any, role: str) -> Usage:
        """An empty counter priced by ``config``'s ``{role}_price_input``/``_output`` fields."""
        return cls(
            price_input=getattr(config, f"{role}_price_input"),
            price_output=getattr(config, f"{role}_price_output"),
        )

    def add(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.calls += 1
        if prompt_tokens is not None or completion_tokens is not None:
            self.reported += 1
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0

    @property
    def cost_usd(self) -> float:
        return (
            self.prompt_tokens * self.price_input + self.completion_tokens * self.price_output
        ) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "calls_with_usage": self.reported,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass
class RunState(Generic[C]):
    """State shared by the steps of one run: the usage of this run and in all (cached records
    included), the new and failed calls per step, and the first error of each step."""

    config: C
    out: Path
    progress: Progress | None
    usage: dict[str, Usage]
    total: dict[str, Usage]
    new_calls: dict[str, int]
    failures: dict[str, int]
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        config: C,
        out: Path,
        *,
        roles: Sequence[str],
        steps: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> RunState[C]:
        """A run with empty counters: usage per model ``role`` (priced by ``config``'s
        ``{role}_price_input``/``_output``), new and failed calls per step (default: the roles)."""
        steps = roles if steps is None else steps
        return cls(
            config=config,
            out=out,
            progress=progress,
            usage={role: Usage.priced(config, role) for role in roles},
            total={role: Usage.priced(config, role) for role in roles},
            new_calls=dict.fromkeys(steps, 0),
            failures=dict.fromkeys(steps, 0),
        )

    def count_reply(self, step: str, reply: ChatReply) -> None:
        """Count a call this run made: one new call, its tokens in ``usage`` and ``total``."""
        self.new_calls[step] += 1
        self.usage[step].add(reply.prompt_tokens, reply.completion_tokens)
        self.total[step].add(reply.prompt_tokens, reply.completion_tokens)

    def count_cached(self, step: str, record: Mapping[str, Any]) -> None:
        """Count a record replayed from a step file: its tokens in ``total`` only."""
        self.total[step].add(record.get("prompt_tokens"), record.get("completion_tokens"))

    def fail(self, step: str, error: BaseException) -> None:
        self.failures[step] += 1
        message = f"{type(error).__name__}: {error}"
        if step not in self.errors:
            self.errors[step] = message
            logger.warning(
                "%s step: a call failed after retries (%s); re-run to retry", step, message
            )

    def describe(self) -> str:
        parts = []
        for role, usage in self.usage.items():
            tokens = usage.prompt_tokens + usage.completion_tokens
            text = f"{role} {tokens:,} tok"
            if usage.price_input or usage.price_output:
                text += f" ${usage.cost_usd:.4f}"
            parts.append(text)
        return " | ".join(parts)

    async def call(self, limiter: CallLimiter, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` under the limiter, retried on transient errors (:mod:`bpo_trainer.retry`)."""
        policy = RetryPolicy(
            self.config.max_retries, max_wait=self.config.retry_max_wait, retry_on=is_transient
        )

        async def limited() -> T:
            async with limiter.slot():
                return await fn()

        return await policy.call(limited)

    async def chat_step(
        self,
        step: str,
        path: Path,
        jobs: Sequence[ChatJob[I]],
        model: ChatModel,
        params: SamplingParams,
        record: Callable[[ChatJob[I], ChatReply], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The records of ``jobs``, in their order: replayed from the step file ``path`` where it
        has their key, else one call of ``model`` each, ``record(job, reply)`` appended to
        ``path`` as it finishes. A call that still fails after the retries is counted
        (:meth:`fail`), writes nothing and has no record: the next run makes it again."""
        config: Any = self.config
        done = records_by_key(path)
        todo = [job for job in jobs if job.key not in done]
        for job in jobs:
            if job.key in done:
                self.count_cached(step, done[job.key])
        if todo:
            limiter = CallLimiter(config.concurrency, config.requests_per_second)
            with (
                JsonlWriter(path, fsync=False) as writer,
                self.progress_task(step, len(todo)) as advance,
            ):

                async def one(job: ChatJob[I]) -> None:
                    try:
                        reply = await self.call(
                            limiter,
                            lambda: model.achat(
                                job.messages, params, timeout=config.request_timeout
                            ),
                        )
                    except Exception as error:
                        self.fail(step, error)
                        advance()
                        return
                    self.count_reply(step, reply)
                    done[job.key] = {"key": job.key, **record(job, reply)}
                    writer.write(done[job.key])
                    advance()

                await asyncio.gather(*(one(job) for job in todo))
        return [done[job.key] for job in jobs if job.key in done]

    @contextlib.contextmanager
    def progress_task(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar for a step of ``total`` calls; yields its ``advance()``."""
        progress = self.progress
        if progress is None:
            yield lambda: None
            return
        task = progress.add_task(label, total=total)

        def advance() -> None:
            progress.update(task, advance=1, description=f"{label}  {self.describe()}")

        try:
            yield advance
        finally:
            progress.update(task, description=f"{label}  {self.describe()}")


def progress_bar(enabled: bool) -> contextlib.AbstractContextManager[Progress | None]:
    """A rich progress display for a run's steps (``None`` when ``enabled`` is false)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


@contextlib.asynccontextmanager
async def chat_models(
    config: Any, given: Mapping[str, ChatModel | None]
) -> AsyncIterator[dict[str, ChatModel]]:
    """The chat model of each role: the one given, else the one ``config`` describes
    (:func:`~bpo_trainer.evaluate.chat.build_chat_model`), closed on exit."""
    from bpo_trainer.evaluate.chat import build_chat_model

    models = {
        role: build_chat_model(config, role) if model is None else model
        for role, model in given.items()
    }
    try:
        yield models
    finally:
        for role, model in models.items():
            if given[role] is None:
                await model.aclose()


def records_by_key(path: Path) -> dict[str, dict[str, Any]]:
    """The records already in a step file, by key (the last one wins)."""
    if not path.exists():
        return {}
    return {r["key"]: r for r in read_jsonl(path, allow_truncated_tail=True) if "key" in r}


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a stage's coroutine from sync code on a fresh event loop: this thread's, or a worker
    thread's when this thread already runs one (a notebook, an async caller)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpo-stage") as pool:
        return pool.submit(asyncio.run, coro).result()
