"""Pieces shared by the ``bpo`` commands: the optimizer's options, choosing a backend from them,
the serving commands' checks, and clean exits."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, NoReturn

import typer

from bpo_integrations.backends.base import Backend
from bpo_integrations.backends.factory import (
    BackendConfigError,
    BackendKind,
    MissingExtraError,
    create,
)

__all__ = [
    "RUNTIME_ERROR",
    "USAGE_ERROR",
    "AdapterOption",
    "BackendKind",
    "CliError",
    "ModeName",
    "ModeOption",
    "PrecisionOption",
    "build_backend",
    "fail",
    "missing_extra",
    "warn_if_open",
]

USAGE_ERROR = 2
"""Exit code for bad options or bad input (the user must change the command or the file)."""

RUNTIME_ERROR = 1
"""Exit code for failures while running (unreachable endpoint, model that cannot load)."""


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ModeName(str, Enum):
    stable = "stable"
    aggressive = "aggressive"
    greedy = "greedy"


AdapterOption = Annotated[
    str | None, typer.Option(help="A LoRA adapter folder to apply (local only).")
]
PrecisionOption = Annotated[
    str | None, typer.Option(help="local: how the model stores weights: q8_0 (default), f16, q4_0.")
]
ModeOption = Annotated[
    ModeName | None,
    typer.Option(help="Decoding preset (default: the model's recommended one, else stable)."),
]


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


def missing_extra(command: str, extra: str, error: ImportError) -> NoReturn:
    """Exit naming the extra that ``bpo <command>`` needs and the module found missing."""
    fail(
        f"bpo {command} needs the '{extra}' extra ({error.name} is missing): "
        f"pip install 'bpo-integrations[{extra}]'",
        RUNTIME_ERROR,
    )


def warn_if_open(host: str, api_key: str | None, what: str) -> None:
    """Warn on stderr when a server listens beyond this machine without an API key."""
    if host not in _LOOPBACK and api_key is None:
        typer.echo(
            f"Warning: listening on {host} without --api-key: anyone who can reach this "
            f"host can {what}",
            err=True,
        )


def build_backend(
    kind: BackendKind | str,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    adapter: str | None = None,
    precision: str | None = None,
) -> Backend:
    """:func:`bpo_integrations.backends.create`, its errors as :class:`CliError`."""
    try:
        return create(
            kind,
            endpoint=endpoint,
            model=model,
            adapter=adapter,
            precision=precision,  # type: ignore[arg-type]
        )
    except MissingExtraError as error:
        raise CliError(str(error), RUNTIME_ERROR) from error
    except BackendConfigError as error:
        raise CliError(str(error)) from error
