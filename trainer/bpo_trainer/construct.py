"""Stage ``construct``: ask an LLM to compare each feedback pair and write an optimized prompt.

Each record gets the paper's construction prompt (:mod:`bpo_trainer.prompts`) as one user message to
an OpenAI-compatible chat endpoint: OpenAI itself (``gpt-3.5-turbo``, as in the paper) or, with
``base_url``, vLLM, TGI or ``bpo serve``. Requests run concurrently (``concurrency`` in flight)
under a requests-per-minute limit, and 429, 5xx, connection errors, malformed or empty answers are
retried with the trainer's retry policy (:mod:`bpo_trainer.retry`: jittered exponential backoff,
``Retry-After`` honoured).

Every answer is appended to ``output_file`` the moment it arrives (the record, its raw
``response``, the model and the token usage), so a restarted job skips the ids already there and a
crash loses at most the requests in flight. Records that still fail are written to
``errors_file`` and retried by the next run. A rich progress bar shows the cost so far (token
usage times the configured prices), retries and errors.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bpo_integrations.jsonl import JsonlWriter, finished_keys
from bpo_integrations.retry import RetryPolicy
from bpo_trainer.errors import StageFailedError, TrainerConfigError
from bpo_trainer.evaluate.runtime import CallLimiter, Usage, run_blocking
from bpo_trainer.prompts import build_construction_prompt
from bpo_trainer.records import read_records, record_id
from bpo_trainer.retry import is_transient


@dataclass
class ConstructConfig:
    """Configuration of ``bpo-train construct`` (every field is a command-line flag).

    Example:
        >>> config = ConstructConfig(base_url="http://localhost:8000/v1", model="my-model")
        >>> config.errors_path().name
        'constructed.errors.jsonl'
    """

    input_file: str = field(
        default="data/feedback.jsonl",
        metadata={"help": "Feedback records (from `bpo-train collect`), .jsonl or .json."},
    )
    output_file: str = field(
        default="data/constructed.jsonl",
        metadata={
            "help": "JSONL the answers are appended to; a rerun skips the ids already in it."
        },
    )
    errors_file: str | None = field(
        default=None,
        metadata={"help": "JSONL of requests that failed (default: <output>.errors.jsonl)."},
    )
    model: str = field(default="gpt-3.5-turbo", metadata={"help": "Chat model to ask."})
    base_url: str | None = field(
        default=None,
        metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM, TGI)."},
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "API key (default: $OPENAI_API_KEY; 'EMPTY' for a local base_url)."},
    )
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature (paper: 0.9)."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "Answer length limit in tokens (default: the server's)."}
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    requests_per_minute: float = field(
        default=500.0, metadata={"help": "Rate limit over all requests, retries included (0: off)."}
    )
    max_retries: int = field(
        default=6, metadata={"help": "Retries of one request (429, 5xx, connection errors)."}
    )
    retry_initial_wait: float = field(
        default=1.0, metadata={"help": "First backoff in seconds; it doubles (with jitter)."}
    )
    retry_max_wait: float = field(
        default=60.0, metadata={"help": "Longest wait between retries, Retry-After included."}
    )
    request_timeout: float = field(default=120.0, metadata={"help": "Seconds per request."})
    max_consecutive_failures: int = field(
        default=20,
        metadata={"help": "Stop the job after this many records fail in a row (endpoint down)."},
    )
    prompt_price_per_1k: float = field(
        default=0.0005, metadata={"help": "USD per 1000 prompt tokens, for the cost estimate."}
    )
    completion_price_per_1k: float = field(
        default=0.0015, metadata={"help": "USD per 1000 completion tokens, for the cost estimate."}
    )
    max_records: int | None = field(
        default=None, metadata={"help": "Use only the first N input records (a trial run)."}
    )

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise TrainerConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.requests_per_minute < 0 or self.max_retries < 0:
            raise TrainerConfigError("--requests_per_minute and --max_retries must be >= 0")
        if self.max_consecutive_failures < 1:
            raise TrainerConfigError("--max_consecutive_failures must be at least 1")

    def errors_path(self) -> Path:
        """``errors_file``, or ``<output stem>.errors.jsonl`` beside the output."""
        if self.errors_file:
            return Path(self.errors_file)
        output = Path(self.output_file)
        return output.with_name(output.stem + ".errors.jsonl")


class EmptyAnswerError(Exception):
    """The endpoint answered 200 with no text; retried like a transient failure."""


@dataclass
class _Tally:
    usage: Usage
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    consecutive_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def _retryable(error: BaseException) -> bool:
    return is_transient(error) or isinstance(error, EmptyAnswerError | json.JSONDecodeError)


def _fatal(error: BaseException, config: ConstructConfig) -> TrainerConfigError | None:
    """A config problem that every request would hit: stop at once with the fix."""
    import openai

    where = config.base_url or "the OpenAI API"
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return TrainerConfigError(
            f"{where} refused the API key ({error.status_code}): set OPENAI_API_KEY or --api_key"
        )
    if isinstance(error, openai.NotFoundError):
        return TrainerConfigError(
            f"{where} answered 404 for model {config.model!r} ({error.message}): check --model "
            "and --base_url (it usually ends in /v1)"
        )
    return None


class Constructor:
    """Sends construction prompts and appends the answers; :func:`arun_construct` drives it."""

    def __init__(self, config: ConstructConfig, client: Any) -> None:
        self.config = config
        self.client = client
        rate = config.requests_per_minute / 60 if config.requests_per_minute else None
        self.limiter = CallLimiter(config.concurrency, rate)
        self.retry = RetryPolicy(
            config.max_retries,
            max_wait=config.retry_max_wait,
            initial_wait=config.retry_initial_wait,
            retry_on=_retryable,
        )
        self.tally = _Tally(
            Usage(  # the config's prices are per 1000 tokens, Usage's per million
                price_input=config.prompt_price_per_1k * 1000,
                price_output=config.completion_price_per_1k * 1000,
            )
        )

    def _count_retry(self, retry_state: Any) -> None:
        self.tally.retries += 1

    async def ask(self, prompt: str) -> Any:
        """One chat completion for ``prompt``, retried on transient failures."""
        return await self.retry.call(lambda: self._ask_once(prompt), before_sleep=self._count_retry)

    async def _ask_once(self, prompt: str) -> Any:
        async with self.limiter.slot():
            completion = await self.client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.config.temperature,
                **({"max_tokens": self.config.max_tokens} if self.config.max_tokens else {}),
            )
        if not completion.choices or not (completion.choices[0].message.content or ""):
            raise EmptyAnswerError("the endpoint returned an empty answer")
        return completion

    async def construct(
        self, record: Mapping[str, Any], writer: JsonlWriter, errors: JsonlWriter
    ) -> None:
        """Ask for one record and append the answer (or the error)."""
        try:
            completion = await self.ask(build_construction_prompt(record))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            fatal = _fatal(error, self.config)
            if fatal is not None:
                raise fatal from error
            self.tally.failed += 1
            self.tally.consecutive_failures += 1
            self.tally.errors[type(error).__name__] += 1
            errors.write(
                {"id": record["id"], "error": type(error).__name__, "message": str(error)[:500]}
            )
            if self.tally.consecutive_failures >= self.config.max_consecutive_failures:
                raise StageFailedError(
                    f"{self.tally.consecutive_failures} records failed in a row (last: "
                    f"{type(error).__name__}: {str(error)[:200]}); the endpoint seems down. "
                    f"{self.tally.succeeded} answers of this run are saved in "
                    f"{self.config.output_file}: run the same command again to resume"
                ) from error
            return
        usage = completion.usage
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        choice = completion.choices[0]
        writer.write(
            {
                **record,
                "response": choice.message.content,
                "model": completion.model or self.config.model,
                "finish_reason": choice.finish_reason,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            }
        )
        self.tally.succeeded += 1
        self.tally.consecutive_failures = 0
        self.tally.usage.add(prompt_tokens, completion_tokens)


def load_feedback(config: ConstructConfig) -> list[dict[str, Any]]:
    """The input records with an ``id`` each (derived from the content when missing), checked
    for the fields the prompt needs; duplicates of an id are dropped."""
    try:
        records = read_records(config.input_file)
    except (FileNotFoundError, ValueError) as error:
        raise TrainerConfigError(str(error)) from error
    if config.max_records is not None:
        records = records[: config.max_records]
    seen: set[Any] = set()
    unique: list[dict[str, Any]] = []
    for position, record in enumerate(records):
        try:
            build_construction_prompt(record)
        except ValueError as error:
            raise TrainerConfigError(f"{config.input_file} record {position}: {error}") from error
        if "id" not in record:
            record = {
                "id": record_id(
                    str(record.get("source", "record")),
                    record["instruction"],
                    record.get("context"),
                    record["good_res"],
                    record["bad_res"],
                ),
                **record,
            }
        if record["id"] in seen:
            continue
        seen.add(record["id"])
        unique.append(record)
    return unique


def _client(config: ConstructConfig) -> Any:
    import openai

    api_key = config.api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not config.base_url:
            raise TrainerConfigError(
                "no API key: set OPENAI_API_KEY or --api_key, or point --base_url at a local "
                "OpenAI-compatible server (vLLM, TGI, `bpo serve`)"
            )
        api_key = "EMPTY"
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=config.base_url,
        max_retries=0,
        timeout=config.request_timeout,
    )


async def arun_construct(
    config: ConstructConfig, *, console: Console | None = None
) -> dict[str, Any]:
    """Async :func:`run_construct` (use it inside a running event loop)."""
    console = console or Console(stderr=True)
    records = load_feedback(config)
    done = finished_keys(config.output_file, "id")
    todo = [record for record in records if record["id"] not in done]
    constructor = Constructor(config, _client(config))
    tally = constructor.tally
    pending = iter(todo)
    progress = Progress(
        TextColumn("[bold]construct"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("${task.fields[cost]:.4f}"),
        TextColumn("retries {task.fields[retries]}"),
        TextColumn("[red]errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task("construct", total=len(todo), cost=0.0, retries=0, errors=0)

    async def worker(writer: JsonlWriter, errors: JsonlWriter) -> None:
        for record in pending:
            await constructor.construct(record, writer, errors)
            progress.update(
                task,
                advance=1,
                cost=tally.usage.cost_usd,
                retries=tally.retries,
                errors=tally.failed,
            )

    try:
        with (
            progress,
            JsonlWriter(config.output_file) as writer,
            JsonlWriter(config.errors_path()) as errors,
        ):
            workers = [
                asyncio.create_task(worker(writer, errors))
                for _ in range(min(config.concurrency, len(todo)))
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for running in workers:
                    running.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    finally:
        await constructor.client.close()
    summary = {
        "output_file": config.output_file,
        "errors_file": str(config.errors_path()),
        "records": len(records),
        "already_done": len(records) - len(todo),
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "retries": tally.retries,
        "prompt_tokens": tally.usage.prompt_tokens,
        "completion_tokens": tally.usage.completion_tokens,
        "cost_usd": round(tally.usage.cost_usd, 6),
        "errors": dict(tally.errors),
    }
    console.print(
        f"construct: {tally.succeeded} answered, {tally.failed} failed "
        f"({summary['already_done']} already done), ${summary['cost_usd']:.4f}"
        + (f"; rerun to retry the failures (see {summary['errors_file']})" if tally.failed else "")
    )
    return summary


def run_construct(config: ConstructConfig, *, console: Console | None = None) -> dict[str, Any]:
    """Construct optimized prompts for ``config.input_file``; returns a summary with the counts,
    token usage and estimated cost.

    Safe to call from a notebook (see :func:`~bpo_trainer.evaluate.runtime.run_blocking`).

    Example:
        >>> from bpo_integrations.testing.servers import ScriptedServer
        >>> import json, pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "in.jsonl").write_text(json.dumps(
        ...     {"id": "1", "instruction": "Name a planet.", "good_res": "Mars.", "bad_res": "?"}))
        >>> answer = "Detailed Comparison Result: ...\\nOptimized Instruction: Name one. [END]"
        >>> with ScriptedServer(lambda prompt: answer) as server:
        ...     summary = run_construct(ConstructConfig(
        ...         input_file=str(folder / "in.jsonl"), output_file=str(folder / "out.jsonl"),
        ...         base_url=server.url + "/v1", model="scripted-bpo"), console=Console(quiet=True))
        >>> summary["succeeded"], summary["failed"]
        (1, 0)
    """
    return run_blocking(arun_construct(config, console=console))
