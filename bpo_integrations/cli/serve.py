"""``bpo serve`` (TGI's API on a local model) and ``bpo check`` (is an endpoint ready?).

Every ``bpo serve`` option mirrors a field of :class:`~bpo_integrations.serve.config.ServeConfig`
(same name, same help) and can come from a ``BPO_<NAME>`` environment variable.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import fields
from typing import Any

import typer

from bpo_integrations.cli import app
from bpo_integrations.serve.config import ServeConfig

_HELP = {f.name: f.metadata.get("help", "") for f in fields(ServeConfig)}
_DEFAULTS = ServeConfig()
_START_HINT = (
    "start a server with `bpo serve --port 8080`, or TGI with examples/tgi/docker-compose.yml"
)


def _option(name: str, *flags: str) -> Any:
    """A typer option for ``ServeConfig.<name>``: its default, help and ``BPO_<NAME>`` env var."""
    flag = "--" + name.replace("_", "-")
    return typer.Option(
        getattr(_DEFAULTS, name),
        flag,
        *flags,
        help=_HELP[name],
        envvar=f"BPO_{name.upper()}",
        show_default=getattr(_DEFAULTS, name) is not None,
    )


@app.command("serve")
def serve(
    model: str | None = _option("model"),
    adapter: str | None = _option("adapter"),
    served_model_name: str | None = _option("served_model_name"),
    host: str = _option("host"),
    port: int = _option("port"),
    api_key: str | None = _option("api_key"),
    precision: str = _option("precision"),
    length_rule: bool | None = typer.Option(
        None,
        "--length-rule/--no-length-rule",
        help=_HELP["length_rule"],
        envvar="BPO_LENGTH_RULE",
        show_default=False,
    ),
    max_input_tokens: int | None = _option("max_input_tokens"),
    max_total_tokens: int | None = _option("max_total_tokens"),
    max_new_tokens: int = _option("max_new_tokens"),
    max_batch_size: int = _option("max_batch_size"),
    max_queue: int = _option("max_queue", "--max-concurrent-requests"),
    max_stop_sequences: int = _option("max_stop_sequences"),
    graceful_shutdown_s: float = _option("graceful_shutdown_s"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
) -> None:
    """Serve the optimizer model with TGI's HTTP API (and OpenAI's), on CPU or GPU.

    Clients of TGI (huggingface_hub's InferenceClient, the openai client, this project's tgi and
    openai backends) work against it unchanged. Concurrent requests are decoded together by the
    engine's continuous batching.
    """
    from bpo_integrations.cli._common import RUNTIME_ERROR, USAGE_ERROR, fail
    from bpo_integrations.errors import BackendError

    try:
        config = ServeConfig(
            model=model,
            adapter=adapter,
            served_model_name=served_model_name,
            host=host,
            port=port,
            api_key=api_key,
            precision=precision,
            length_rule=length_rule,
            max_input_tokens=max_input_tokens,
            max_total_tokens=max_total_tokens,
            max_new_tokens=max_new_tokens,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_stop_sequences=max_stop_sequences,
            graceful_shutdown_s=graceful_shutdown_s,
        )
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    try:
        from bpo_integrations.serve.server import run
    except ImportError as error:
        fail(
            f"bpo serve needs the 'serve' extra ({error.name} is missing): "
            "pip install 'bpo-integrations[serve]'",
            RUNTIME_ERROR,
        )
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        typer.echo(
            f"Warning: listening on {config.host} without --api-key: anyone who can reach this "
            "host can use the model",
            err=True,
        )
    try:
        run(config, log_level=log_level)
    except BackendError as error:
        fail(str(error), RUNTIME_ERROR)
    except ValueError as error:  # limits that do not fit the model, found once it is loaded
        fail(str(error), USAGE_ERROR)


@app.command("check")
def check(
    endpoint: str = typer.Option(
        ..., "--endpoint", envvar="BPO_ENDPOINT", help="Base URL of TGI or bpo serve."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="BPO_API_KEY", help="Sent as 'Authorization: Bearer KEY'."
    ),
    prompt: str = typer.Option(
        "Tell me about Harry Potter", "--prompt", help="The prompt to optimize once."
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Rewrite length cap."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per step."),
) -> None:
    """Check an optimizer endpoint (TGI or bpo serve): health, model info, one optimization.

    Exits 0 when the endpoint answered every step, 1 otherwise (with the reason).
    """
    from bpo_integrations.cli._common import RUNTIME_ERROR, USAGE_ERROR, fail

    base = endpoint.rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--endpoint must be an http(s) URL such as http://localhost:8080, got {endpoint!r}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    started = time.perf_counter()
    status, _ = _get(base + "/health", headers, timeout)
    typer.echo(f"endpoint   {base}")
    if status != 200:
        fail(f"{base}/health answered HTTP {status}: the server is not ready", RUNTIME_ERROR)
    typer.echo(f"health     ok ({(time.perf_counter() - started) * 1000:.0f} ms)")

    status, body = _get(base + "/info", headers, timeout)
    if status == 401:
        fail(f"{base} wants an API key: pass --api-key or set BPO_API_KEY", USAGE_ERROR)
    if status != 200 or not isinstance(body, dict):
        fail(f"{base}/info answered HTTP {status}: is this a TGI-compatible server?", RUNTIME_ERROR)
    typer.echo(
        f"model      {body.get('model_id')} ({body.get('router')} {body.get('version')}; "
        f"max input {body.get('max_input_tokens')} / total {body.get('max_total_tokens')} tokens)"
    )

    result = _optimize_once(base, api_key, prompt, max_new_tokens, timeout)
    typer.echo(f"optimize   {result.latency_s:.2f} s")
    typer.echo(f"  original   {result.original}")
    typer.echo(f"  optimized  {result.optimized}")
    reason = result.fallback_reason or ""
    if result.fell_back:
        if reason.startswith(("backend_", "timeout", "unexpected")):
            fail(f"the optimization failed: {reason}", RUNTIME_ERROR)
        typer.echo(f"  note       the server answered, but the rewrite was not used: {reason}")


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
    """``(status, parsed JSON body or None)``; an unreachable server exits with the fix."""
    from bpo_integrations.cli._common import RUNTIME_ERROR, fail

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        fail(f"cannot reach {url} ({reason}): {_START_HINT}", RUNTIME_ERROR)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _optimize_once(
    endpoint: str, api_key: str | None, prompt: str, max_new_tokens: int, timeout: float
) -> Any:
    from bpo_integrations import BPOOptimizer, GenerationSettings
    from bpo_integrations.cli._common import RUNTIME_ERROR, fail

    try:
        from huggingface_hub import constants

        from bpo_integrations.backends.tgi import TGIBackend
    except ImportError as error:
        fail(f"bpo check needs the 'tgi' extra: pip install 'bpo-integrations[tgi]' ({error})")
    optimizer = BPOOptimizer(
        TGIBackend(endpoint, token=api_key, timeout=timeout),
        settings=GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens),
        timeout=timeout,
        max_retries=0,
        cache_size=0,
    )
    # HF_HUB_OFFLINE blocks even requests to the user's own server; this talks to no Hub.
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        return optimizer.optimize(prompt)
    except Exception as error:  # the optimizer falls back instead; anything else is a bug here
        fail(f"the optimization failed: {type(error).__name__}: {error}", RUNTIME_ERROR)
    finally:
        constants.HF_HUB_OFFLINE = offline
