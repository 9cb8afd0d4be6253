"""``bpo proxy``: an OpenAI-compatible proxy that optimizes prompts on their way upstream.

The proxy's options mirror the fields of :class:`~bpo_integrations.proxy.config.ProxyConfig`
(same name, same help) and can come from ``BPO_PROXY_<NAME>`` environment variables; the
optimizer options are those of ``bpo optimize``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

import typer

from bpo_integrations.cli import app
from bpo_integrations.cli._common import (
    USAGE_ERROR,
    AdapterOption,
    BackendKind,
    CliError,
    ModeOption,
    PrecisionOption,
    build_backend,
    fail,
    missing_extra,
    warn_if_open,
)
from bpo_integrations.proxy.config import ProxyConfig, redact_url

_FIELDS = {f.name: f for f in fields(ProxyConfig)}


def _option(name: str) -> Any:
    """A typer option for ``ProxyConfig.<name>``: its help and environment variable."""
    return typer.Option(
        "--" + name.replace("_", "-"), help=_FIELDS[name].metadata["help"], envvar=_env(name)
    )


def _env(name: str) -> str:
    return f"BPO_PROXY_{name.upper()}"


@app.command("proxy")
def proxy(
    upstream: Annotated[str, _option("upstream")],
    upstream_api_key: Annotated[str | None, _option("upstream_api_key")] = None,
    api_key: Annotated[str | None, _option("api_key")] = None,
    host: Annotated[str, _option("host")] = ProxyConfig.host,
    port: Annotated[int, _option("port")] = ProxyConfig.port,
    skip_models: Annotated[list[str] | None, _option("skip_models")] = None,
    upstream_timeout: Annotated[float, _option("upstream_timeout")] = ProxyConfig.upstream_timeout,
    max_connections: Annotated[int, _option("max_connections")] = ProxyConfig.max_connections,
    backend: Annotated[
        BackendKind, typer.Option(envvar=_env("backend"), help="Where the optimizer runs.")
    ] = BackendKind.local,
    endpoint: Annotated[
        str | None,
        typer.Option(envvar=_env("endpoint"), help="tgi: server URL; openai: base URL (…/v1)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            envvar=_env("model"),
            help="local: hub id or folder (default: the built-in model); openai: model name.",
        ),
    ] = None,
    adapter: AdapterOption = None,
    precision: PrecisionOption = None,
    mode: ModeOption = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            envvar=_env("timeout"),
            help="Latency budget of the optimizer per request, seconds; past it the original "
            "prompt goes upstream.",
        ),
    ] = 10.0,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve an OpenAI-compatible API that rewrites each request's prompt with BPO, then
    forwards it to UPSTREAM (OpenAI, vLLM, SGLang, Ollama, llama.cpp, bpo serve).

    Point any OpenAI client at http://HOST:PORT/v1. Send 'X-BPO: off' to skip one request.

    Example: bpo proxy --upstream http://localhost:8000/v1 --backend tgi --endpoint http://localhost:8080
    """
    from bpo_integrations.optimizer import BPOOptimizer

    try:
        config = ProxyConfig(
            upstream=upstream,
            upstream_api_key=upstream_api_key,
            api_key=api_key,
            host=host,
            port=port,
            skip_models=tuple(skip_models or ()),
            upstream_timeout=upstream_timeout,
            max_connections=max_connections,
        )
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    try:
        from bpo_integrations.proxy.server import run
    except ImportError as error:
        missing_extra("proxy", "proxy", error)
    try:
        engine = build_backend(
            backend, endpoint=endpoint, model=model, adapter=adapter, precision=precision
        )
        optimizer = BPOOptimizer(engine, mode=None if mode is None else mode.value, timeout=timeout)
    except CliError as error:
        fail(error.message, error.code)
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    if backend is BackendKind.tgi:
        # HF_HUB_OFFLINE stops huggingface_hub's client even for the user's own TGI server, and
        # this process downloads nothing from the Hub with the tgi backend.
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = False
    warn_if_open(config.host, config.api_key, "use the upstream through the proxy")
    if not config.upstream_base.endswith("/v1"):
        typer.echo(
            f"Note: the upstream {redact_url(config.upstream_base)} does not end in /v1; the "
            "proxy's /v1/chat/completions goes to UPSTREAM/chat/completions",
            err=True,
        )
    typer.echo(
        f"bpo proxy: http://{config.host}:{config.port}/v1 -> "
        f"{redact_url(config.upstream_base)} (optimizer: {optimizer!r})",
        err=True,
    )
    try:
        run(config, optimizer, log_level=log_level)
    finally:
        optimizer.close()
