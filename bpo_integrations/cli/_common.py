"""Pieces shared by the ``bpo`` commands: choosing a backend from options, and clean exits."""

from __future__ import annotations

import importlib
from enum import Enum
from types import ModuleType
from typing import NoReturn
from urllib.parse import urlparse

import typer

from bpo_integrations.backends.base import Backend

USAGE_ERROR = 2
"""Exit code for bad options or bad input (the user must change the command or the file)."""

RUNTIME_ERROR = 1
"""Exit code for failures while running (unreachable endpoint, model that cannot load)."""


class BackendKind(str, Enum):
    local = "local"
    tgi = "tgi"
    openai = "openai"


class CliError(Exception):
    """A problem to report as one line on stderr and an exit code, without a traceback."""

    def __init__(self, message: str, code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def build_backend(
    kind: BackendKind | str,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    adapter: str | None = None,
    precision: str | None = None,
) -> Backend:
    """The backend the options describe; :class:`CliError` names any option that does not fit.

    ``local`` runs ``model`` (default: the built-in default model) in this process; ``tgi``
    needs ``endpoint``; ``openai`` needs ``model`` and takes ``endpoint`` as its base URL.
    """
    kind = BackendKind(kind)
    if kind is BackendKind.local:
        if endpoint:
            raise CliError(
                "--endpoint is for --backend tgi or openai; the local backend runs the model in "
                "this process (choose it with --model)"
            )
        from bpo_integrations.backends.local import LocalBackend

        try:
            return LocalBackend(model, adapter=adapter, precision=precision or "f16")  # type: ignore[arg-type]
        except ValueError as error:
            raise CliError(str(error)) from error
    if adapter:
        raise CliError(
            f"--adapter only works with --backend local (the {kind.value} server "
            "loads its own adapter)"
        )
    if precision:
        raise CliError("--precision only works with --backend local")
    if endpoint is not None:
        _check_url(endpoint)
    if kind is BackendKind.tgi:
        if not endpoint:
            raise CliError(
                "--backend tgi needs --endpoint URL, e.g. --endpoint http://localhost:8080"
            )
        if model:
            raise CliError("--model does not apply to --backend tgi: the server serves one model")
        module = _import_backend("tgi")
        return module.TGIBackend(endpoint)
    if not model:
        raise CliError("--backend openai needs --model NAME, the model name the server serves")
    module = _import_backend("openai")
    try:
        return module.OpenAIBackend(model, base_url=endpoint)
    except ValueError as error:
        raise CliError(str(error)) from error


def _check_url(endpoint: str) -> None:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CliError(
            f"--endpoint must be an http(s) URL such as http://localhost:8080, got {endpoint!r}"
        )


def _import_backend(extra: str) -> ModuleType:
    try:
        return importlib.import_module(f"bpo_integrations.backends.{extra}")
    except ImportError as error:
        raise CliError(
            f"--backend {extra} needs the {extra!r} extra: pip install 'bpo-integrations[{extra}]' "
            f"({error})",
            RUNTIME_ERROR,
        ) from error
