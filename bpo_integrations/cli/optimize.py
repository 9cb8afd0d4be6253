"""``bpo optimize``: rewrite one prompt, stdin, or a JSONL file (resumable)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from bpo_integrations.cli import app
from bpo_integrations.cli._common import (
    RUNTIME_ERROR,
    USAGE_ERROR,
    AdapterOption,
    BackendKind,
    CliError,
    ModeOption,
    PrecisionOption,
    build_backend,
    fail,
)
from bpo_integrations.errors import BPOError
from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION
from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.result import FallbackReason, OptimizationResult
from bpo_integrations.settings import GenerationSettings

_BACKEND_DOWN = frozenset(
    {
        FallbackReason.BACKEND_UNAVAILABLE,
        FallbackReason.BACKEND_ERROR,
        FallbackReason.BACKEND_OVERLOADED,
    }
)
"""Fallbacks that mean the optimizer did not work at all (rather than a rejected rewrite): they
stop the command. One prompt that ran out of time does too; a file's is written as a fallback."""


@dataclass(frozen=True)
class _Line:
    number: int
    record: dict[str, Any]
    prompt: str
    context: str | None
    key: tuple[str, str]


@app.command("optimize")
def optimize_command(
    text: Annotated[
        str | None,
        typer.Argument(help="The prompt to optimize; read from stdin when omitted or '-'."),
    ] = None,
    input_path: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help='A JSONL file, one {"prompt": ..., "context"?, "id"?} per line.'
        ),
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to append results; a rerun resumes it."),
    ] = None,
    prompt_field: Annotated[str, typer.Option(help="The input key holding the prompt.")] = "prompt",
    context_field: Annotated[
        str, typer.Option(help="The input key holding context passed on verbatim.")
    ] = "context",
    id_field: Annotated[
        str, typer.Option(help="The input key that identifies a line when resuming.")
    ] = "id",
    backend: Annotated[
        BackendKind, typer.Option(help="Where the optimizer model runs.")
    ] = BackendKind.local,
    endpoint: Annotated[
        str | None, typer.Option(help="Server URL for tgi, or base URL (…/v1) for openai.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="local: hub id or folder (default: the built-in model); openai: name."),
    ] = None,
    adapter: AdapterOption = None,
    precision: PrecisionOption = None,
    mode: ModeOption = None,
    iterations: Annotated[int, typer.Option(min=1, help="Rounds of re-optimization.")] = 1,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="Latency budget per prompt, seconds.")
    ] = 300.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest rewrite, in tokens.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="Prompts optimized at once (file mode); default: what the backend batches."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the full result record as JSON.")
    ] = False,
) -> None:
    """Optimize a prompt (argument or stdin), or every line of a JSONL file.

    Example: bpo optimize "Tell me about Harry Potter" --backend tgi --endpoint http://localhost:8080
    """
    try:
        if input_path is not None or output_path is not None:
            if text is not None:
                raise CliError("give either a prompt or --input FILE, not both")
            if input_path is None or output_path is None:
                raise CliError(
                    "--input and --output go together: bpo optimize -i in.jsonl -o out.jsonl"
                )
            lines = read_input(input_path, prompt_field, context_field, id_field)
        else:
            prompt = _read_prompt(text)
        engine = build_backend(
            backend, endpoint=endpoint, model=model, adapter=adapter, precision=precision
        )
        preset = GenerationSettings.for_mode(mode.value) if mode else None
        preset = preset or engine.recommended_settings() or GenerationSettings.for_mode("stable")
        settings = replace(
            preset, seed=seed, max_new_tokens=max_new_tokens or preset.max_new_tokens
        )
        _load_local(engine)
        optimizer = BPOOptimizer(
            engine,
            settings=settings,
            iterations=iterations,
            timeout=timeout,
            max_concurrency=concurrency,
        )
        try:
            if input_path is not None and output_path is not None:
                _optimize_file(optimizer, lines, output_path, id_field, json_output)
            else:
                _optimize_one(optimizer, prompt, json_output, endpoint)
        finally:
            optimizer.close()
    except CliError as error:
        fail(error.message, error.code)
    except KeyboardInterrupt:
        rerun = " (rerun the same command to resume)" if output_path is not None else ""
        fail(f"interrupted{rerun}", 130)


# -- single prompt ------------------------------------------------------------------------------


def _read_prompt(text: str | None) -> str:
    if text is not None and text != "-":
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise CliError('no prompt: pass one (bpo optimize "..."), pipe it on stdin, or use --input')
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    try:
        prompt = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CliError(
            f"stdin is not valid UTF-8 (byte {error.start}: {error.reason}); re-encode it, "
            "e.g. iconv -t UTF-8"
        ) from error
    prompt = prompt.removesuffix("\n").removesuffix("\r")
    if not prompt.strip():
        raise CliError("the prompt on stdin is empty")
    return prompt


def _optimize_one(
    optimizer: BPOOptimizer, prompt: str, json_output: bool, endpoint: str | None
) -> None:
    result = optimizer.optimize(prompt)
    _raise_if_fatal(result, optimizer, endpoint)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.fell_back and result.fallback_reason is not FallbackReason.EMPTY_INPUT:
        typer.echo(f"note: kept the original prompt ({result.fallback_message})", err=True)
    typer.echo(result.text)


def _raise_if_fatal(
    result: OptimizationResult, optimizer: BPOOptimizer, endpoint: str | None
) -> None:
    kind, detail = result.fallback_reason, result.fallback_detail
    if not result.fell_back or (kind not in _BACKEND_DOWN and kind is not FallbackReason.TIMEOUT):
        return
    backend = optimizer.backend.name
    if kind is FallbackReason.BACKEND_UNAVAILABLE:
        where = f" at {endpoint}" if endpoint else ""
        message = f"the {backend} endpoint{where} is unreachable: {detail}"
    elif kind is FallbackReason.TIMEOUT:
        message = f"the {backend} backend timed out ({detail}); raise --timeout if it is just slow"
    else:
        message = f"the {backend} backend failed: {detail}"
    raise CliError(message, RUNTIME_ERROR)


def _load_local(engine: object) -> None:
    """Load a local model before any prompt, so that a missing model fails at once and clearly."""
    load = getattr(engine, "load", None)
    if load is None:
        return
    from rich.console import Console

    from bpo_integrations.inference.prepare import default_prepared_path, is_prepared

    message = "Loading the optimizer model…"
    if getattr(engine, "model_id", "") is None:
        prepared = default_prepared_path(getattr(engine, "precision", DEFAULT_PRECISION))
        if prepared is None or not is_prepared(prepared):
            message = "Preparing the default model for the engine (once, about 30 s)…"
    try:
        with Console(stderr=True).status(message):
            load()
    except BPOError as error:
        raise CliError(f"cannot load the optimizer model: {error}", RUNTIME_ERROR) from error


# -- JSONL files --------------------------------------------------------------------------------


def read_input(path: Path, prompt_field: str, context_field: str, id_field: str) -> list[_Line]:
    """Read and validate the whole input first, so that a bad line fails before any work."""
    if not path.is_file():
        raise CliError(
            f"input file {str(path)!r} does not exist"
            if not path.exists()
            else f"input {str(path)!r} is not a file"
        )
    lines: list[_Line] = []
    seen: dict[tuple[str, str], int] = {}
    raw_lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise CliError(
                f"{where}: not valid UTF-8 ({error.reason}); the input must be UTF-8 JSONL"
            ) from error
        except json.JSONDecodeError as error:
            raise CliError(
                f"{where}: not valid JSON ({error.msg}); the input must be JSONL, "
                "one JSON object per line"
            ) from error
        if not isinstance(record, dict):
            raise CliError(f"{where}: expected a JSON object, got {type(record).__name__}")
        prompt = record.get(prompt_field)
        if not isinstance(prompt, str):
            fields = ", ".join(map(repr, record)) or "none"
            problem = "no" if prompt_field not in record else "a non-string"
            raise CliError(
                f"{where}: {problem} {prompt_field!r} field (fields: {fields}); choose "
                "the prompt's key with --prompt-field"
            )
        context = record.get(context_field)
        if context is not None and not isinstance(context, str):
            raise CliError(
                f"{where}: {context_field!r} must be a string or null, got {type(context).__name__}"
            )
        key = _key(record, number, id_field)
        if key in seen:
            raise CliError(
                f"{where}: duplicate {id_field} {record[id_field]!r} (also on line "
                f"{seen[key]}); ids must be unique to resume"
            )
        seen[key] = number
        lines.append(_Line(number, record, prompt, context, key))
    return lines


def _key(record: dict[str, Any], number: int, id_field: str) -> tuple[str, str]:
    if record.get(id_field) is not None:
        return ("id", json.dumps(record[id_field], sort_keys=True))
    return ("line", str(number))


def finished_keys(path: Path, id_field: str) -> set[tuple[str, str]]:
    """The keys of the lines already in an earlier run's output (a cut-off last line is ignored)."""
    from bpo_integrations.jsonl import JsonlError, read_jsonl

    if not path.exists():
        return set()
    done: set[tuple[str, str]] = set()
    try:
        for record in read_jsonl(path, allow_truncated_tail=True):
            number = record.get("input_line")
            done.add(_key(record, number if isinstance(number, int) else -1, id_field))
    except JsonlError as error:
        raise CliError(
            f"the existing output is damaged: {error}; move it away to start over"
        ) from error
    return done


def _optimize_file(
    optimizer: BPOOptimizer,
    lines: list[_Line],
    output: Path,
    id_field: str,
    json_output: bool,
) -> None:
    """Optimize every line not done yet, ``max_concurrency`` at a time, writing each as it ends.

    Each prompt's latency budget starts when it starts, not while it waits for a slot; a prompt
    that still runs out of time is written with its fallback reason and the job goes on.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bpo_integrations.jsonl import JsonlWriter

    done = finished_keys(output, id_field)
    todo = [line for line in lines if line.key not in done]
    skipped = len(lines) - len(todo)
    counts = {"written": 0, "fell_back": 0, "timed_out": 0}
    progress = Progress(
        TextColumn("optimizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )

    async def run(writer: JsonlWriter) -> OptimizationResult | None:
        task = progress.add_task("optimize", total=len(lines), completed=skipped, rate="")
        slots = asyncio.Semaphore(optimizer.max_concurrency)
        started = time.perf_counter()

        async def one(line: _Line) -> tuple[_Line, OptimizationResult]:
            async with slots:
                return line, await optimizer.aoptimize(line.prompt, context=line.context)

        pending = {asyncio.ensure_future(one(line)) for line in todo}
        try:
            for finished in asyncio.as_completed(pending):
                line, result = await finished
                if result.fell_back and result.fallback_reason in _BACKEND_DOWN:
                    return result
                writer.write(
                    {
                        **line.record,
                        "input_line": line.number,
                        "optimized": result.optimized,
                        "result": result.to_dict(),
                    }
                )
                counts["written"] += 1
                counts["fell_back"] += result.fell_back
                counts["timed_out"] += result.fallback_reason is FallbackReason.TIMEOUT
                rate = counts["written"] / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:.2f} prompts/s")
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return None

    with progress, JsonlWriter(output) as writer:
        fatal = asyncio.run(run(writer))
    if fatal is not None:
        try:
            _raise_if_fatal(fatal, optimizer, getattr(optimizer.backend, "endpoint", None))
        except CliError as error:
            raise CliError(
                f"{error.message} ({counts['written']} lines written to {output}; rerun the same "
                "command to resume)",
                error.code,
            ) from None
    summary = {
        "output": str(output),
        "written": counts["written"],
        "skipped": skipped,
        "fell_back": counts["fell_back"],
        "timed_out": counts["timed_out"],
        "total": len(lines),
    }
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        timed_out = f", {counts['timed_out']} ran out of time" if counts["timed_out"] else ""
        typer.echo(
            f"{counts['written']} optimized ({counts['fell_back']} kept the original{timed_out}), "
            f"{skipped} already done -> {output}",
            err=True,
        )


__all__ = ["USAGE_ERROR", "optimize_command", "read_input"]
