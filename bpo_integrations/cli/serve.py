"""``bpo serve``: TGI's API (and OpenAI's) on a local model. ``bpo check`` is in ``check.py``.

Every ``bpo serve`` option mirrors a field of :class:`~bpo_integrations.serve.config.ServeConfig`
(same name, same help) and can come from a ``BPO_<NAME>`` environment variable.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import typer

from bpo_integrations.cli import app
from bpo_integrations.serve.config import ServeConfig

_HELP = {f.name: f.metadata.get("help", "") for f in fields(ServeConfig)}
_DEFAULTS = ServeConfig()


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
    max_body_bytes: int = _option("max_body_bytes"),
    graceful_shutdown_s: float = _option("graceful_shutdown_s"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
) -> None:
    """Serve the optimizer model with TGI's HTTP API (and OpenAI's), on CPU or GPU.

    Clients of TGI (huggingface_hub's InferenceClient, the openai client, this project's tgi and
    openai backends) work against it unchanged. Concurrent requests are decoded together by the
    engine's continuous batching.
    """
    from bpo_integrations.cli._common import (
        RUNTIME_ERROR,
        USAGE_ERROR,
        fail,
        missing_extra,
        warn_if_open,
    )
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
            max_body_bytes=max_body_bytes,
            graceful_shutdown_s=graceful_shutdown_s,
        )
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    try:
        from bpo_integrations.serve.server import run
    except ImportError as error:
        missing_extra("serve", "serve", error)
    warn_if_open(config.host, config.api_key, "use the model")
    try:
        run(config, log_level=log_level)
    except BackendError as error:
        fail(str(error), RUNTIME_ERROR)
    except ValueError as error:  # limits that do not fit the model, found once it is loaded
        fail(str(error), USAGE_ERROR)
