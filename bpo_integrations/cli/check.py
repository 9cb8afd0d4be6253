"""``bpo check``: is an optimizer endpoint ready, which server is it, and does it rewrite a prompt?

Each server says what it is on a route of its own, as documented by each project: TGI and
``bpo serve`` on ``GET /info`` (its ``router``), vLLM on ``GET /version``, SGLang on
``GET /server_info``, llama.cpp's server on ``GET /props``. The check then reads the model
(``/info``, or ``/v1/models`` with the LoRA modules vLLM and SGLang list there) and optimizes one
prompt through the backend that kind of server is used with, printing that backend's line.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import typer

from bpo_integrations.cli import app

_START_HINT = (
    "start a server with `bpo serve --port 8080`, TGI with examples/tgi/docker-compose.yml or "
    "vLLM with examples/vllm/docker-compose.yml"
)


class ServerKind(str, Enum):
    """The kinds of server ``bpo check`` tells apart."""

    tgi = "TGI"
    bpo_serve = "bpo serve"
    vllm = "vLLM"
    sglang = "SGLang"
    llamacpp = "llama.cpp"
    openai = "OpenAI-compatible server"
    """Answers ``/v1/models`` but none of the routes above."""

    @property
    def speaks_tgi(self) -> bool:
        """Whether :class:`~bpo_integrations.backends.tgi.TGIBackend` is the backend to use."""
        return self in (ServerKind.tgi, ServerKind.bpo_serve)


@dataclass(frozen=True)
class ServerIdentity:
    """What a server said it is: its kind, its version, and the body that said so."""

    kind: ServerKind
    version: str | None
    info: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``/v1/models``: a base model, or a LoRA module on ``parent``."""

    id: str
    parent: str | None = None


def _tgi(body: Any) -> ServerIdentity | None:
    if not isinstance(body, dict) or "model_id" not in body:
        return None
    kind = ServerKind.bpo_serve if body.get("router") == "bpo-serve" else ServerKind.tgi
    return ServerIdentity(kind, body.get("version"), body)


def _vllm(body: Any) -> ServerIdentity | None:
    if isinstance(body, dict) and isinstance(body.get("version"), str) and len(body) == 1:
        return ServerIdentity(ServerKind.vllm, body["version"], body)
    return None


def _sglang(body: Any) -> ServerIdentity | None:
    if isinstance(body, dict) and "model_path" in body:
        return ServerIdentity(ServerKind.sglang, body.get("version"), body)
    return None


def _llamacpp(body: Any) -> ServerIdentity | None:
    if isinstance(body, dict) and "default_generation_settings" in body:
        return ServerIdentity(ServerKind.llamacpp, body.get("build_info"), body)
    return None


_PROBES: tuple[tuple[str, Callable[[Any], ServerIdentity | None]], ...] = (
    ("/info", _tgi),
    ("/version", _vllm),
    ("/server_info", _sglang),
    ("/props", _llamacpp),
)


@app.command("check")
def check(
    endpoint: str = typer.Option(
        ...,
        "--endpoint",
        envvar="BPO_ENDPOINT",
        help="The server's root URL (TGI, vLLM, SGLang, llama.cpp or bpo serve), without /v1.",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="BPO_API_KEY", help="Sent as 'Authorization: Bearer KEY'."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="vLLM, SGLang, llama.cpp: the served model or LoRA module to optimize with "
        "(default: the one LoRA module if exactly one is loaded, else the first model).",
    ),
    prompt: str = typer.Option(
        "Tell me about Harry Potter", "--prompt", help="The prompt to optimize once."
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Rewrite length cap."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per step."),
) -> None:
    """Check an optimizer endpoint: health, which server it is, its model, one optimization.

    Exits 0 when the endpoint answered every step, 1 otherwise (with the reason).
    """
    from bpo_integrations.cli._common import RUNTIME_ERROR, USAGE_ERROR, fail

    base = endpoint.rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--endpoint must be an http(s) URL such as http://localhost:8080, got {endpoint!r}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
        typer.echo(f"endpoint   {base} (drop /v1: --endpoint is the server's root)")
    else:
        typer.echo(f"endpoint   {base}")

    started = time.perf_counter()
    status, _ = _get(base + "/health", headers, timeout)
    if status != 200:
        fail(f"{base}/health answered HTTP {status}: the server is not ready", RUNTIME_ERROR)
    typer.echo(f"health     ok ({(time.perf_counter() - started) * 1000:.0f} ms)")

    server = identify_server(base, headers, timeout)
    typer.echo(f"server     {server.kind.value}" + (f" {server.version}" if server.version else ""))
    if server.kind.speaks_tgi:
        if model is not None:
            fail(f"--model applies to OpenAI-compatible servers; {server.kind.value} serves one")
        info = server.info
        typer.echo(
            f"model      {info.get('model_id')} ({info.get('router')} {info.get('version')}; "
            f"max input {info.get('max_input_tokens')} / total {info.get('max_total_tokens')} "
            "tokens)"
        )
        backend_line = f"TGIBackend({base!r})"
    else:
        served = _served_models(base, headers, timeout)
        for entry in served:
            role = f"LoRA module on {entry.parent}" if entry.parent else "model"
            typer.echo(f"{'lora' if entry.parent else 'model':<10} {entry.id} ({role})")
        model = _pick_model(base, served, model)
        backend_line = f"OpenAIBackend({model!r}, base_url={base + '/v1'!r})"
    typer.echo(f"backend    {backend_line}")

    result = _optimize_once(
        server.kind, base, model, api_key, prompt, max_new_tokens, timeout, USAGE_ERROR
    )
    typer.echo(f"optimize   {result.latency_s:.2f} s")
    typer.echo(f"  original   {result.original}")
    typer.echo(f"  optimized  {result.optimized}")
    reason = result.fallback_message
    if result.fell_back and result.fallback_reason is not None:
        if result.fallback_reason.is_backend_failure:
            fail(f"the optimization failed: {reason}", RUNTIME_ERROR)
        typer.echo(f"  note       the server answered, but the rewrite was not used: {reason}")


def identify_server(base: str, headers: dict[str, str], timeout: float) -> ServerIdentity:
    """Which server answers at ``base``, from its documented routes; exits with the fix if none."""
    from bpo_integrations.cli._common import RUNTIME_ERROR, fail

    for path, recognise in _PROBES:
        status, body = _get(base + path, headers, timeout)
        _require_key(base, status)
        identity = recognise(body) if status == 200 else None
        if identity is not None:
            return identity
    status, body = _get(base + "/v1/models", headers, timeout)
    _require_key(base, status)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
        return ServerIdentity(ServerKind.openai, None, body)
    fail(
        f"{base} answered /health but none of TGI's /info, vLLM's /version, SGLang's "
        "/server_info, llama.cpp's /props or OpenAI's /v1/models: is it an LLM server?",
        RUNTIME_ERROR,
    )


def _served_models(base: str, headers: dict[str, str], timeout: float) -> list[ServedModel]:
    from bpo_integrations.cli._common import RUNTIME_ERROR, fail

    status, body = _get(base + "/v1/models", headers, timeout)
    _require_key(base, status)
    data = body.get("data") if isinstance(body, dict) else None
    if status != 200 or not isinstance(data, list) or not data:
        fail(f"{base}/v1/models answered HTTP {status} without a model list", RUNTIME_ERROR)
    return [
        ServedModel(str(entry.get("id")), entry.get("parent"))
        for entry in data
        if isinstance(entry, dict) and entry.get("id")
    ]


def _pick_model(base: str, served: list[ServedModel], wanted: str | None) -> str:
    from bpo_integrations.cli._common import USAGE_ERROR, fail

    loras = [entry.id for entry in served if entry.parent]
    if wanted is None:
        return loras[0] if len(loras) == 1 else served[0].id
    if wanted not in {entry.id for entry in served}:
        bases = [entry.id for entry in served if not entry.parent]
        fail(
            f"--model {wanted!r} is not served by {base}: it serves {bases} and "
            + (f"LoRA modules {loras}" if loras else "no LoRA module")
            + f"; to serve an adapter as {wanted!r} start vLLM with `--enable-lora "
            f"--lora-modules {wanted}=/path/to/adapter`",
            USAGE_ERROR,
        )
    return wanted


def _require_key(base: str, status: int) -> None:
    from bpo_integrations.cli._common import USAGE_ERROR, fail

    if status == 401:
        fail(f"{base} wants an API key: pass --api-key or set BPO_API_KEY", USAGE_ERROR)


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
    kind: ServerKind,
    base: str,
    model: str | None,
    api_key: str | None,
    prompt: str,
    max_new_tokens: int,
    timeout: float,
    usage_error: int,
) -> Any:
    from bpo_integrations import BPOOptimizer, GenerationSettings
    from bpo_integrations.cli._common import RUNTIME_ERROR, fail

    backend: Any
    try:
        if kind.speaks_tgi:
            from bpo_integrations.backends.tgi import TGIBackend

            backend = TGIBackend(base, token=api_key, timeout=timeout)
        else:
            from bpo_integrations.backends.openai import OpenAIBackend

            backend = OpenAIBackend(
                model or "", base_url=base + "/v1", api_key=api_key, timeout=timeout
            )
    except ImportError as error:
        extra = "tgi" if kind.speaks_tgi else "openai"
        fail(
            f"bpo check needs the '{extra}' extra for a {kind.value} server: "
            f"pip install 'bpo-integrations[{extra}]' ({error})",
            usage_error,
        )
    optimizer = BPOOptimizer(
        backend,
        settings=GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens),
        timeout=timeout,
        max_retries=0,
        cache_size=0,
    )
    try:
        with _hub_requests_allowed() if kind.speaks_tgi else contextlib.nullcontext():
            return optimizer.optimize(prompt)
    except Exception as error:  # the optimizer falls back instead; anything else is a bug here
        fail(f"the optimization failed: {type(error).__name__}: {error}", RUNTIME_ERROR)
    finally:
        optimizer.close()


@contextlib.contextmanager
def _hub_requests_allowed() -> Iterator[None]:
    """HF_HUB_OFFLINE blocks even requests to the user's own server; this talks to no Hub."""
    from huggingface_hub import constants

    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
