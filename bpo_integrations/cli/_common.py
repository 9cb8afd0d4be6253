"""Pieces shared by the ``bpo`` commands: choosing a backend from options, and clean exits."""

from __future__ import annotations

from typing import NoReturn

import typer

from bpo_integrations.backends.base import Backend
from bpo_integrations.backends.factory import (
    BackendConfigError,
    BackendKind,
    MissingExtraError,
    create,
)

__all__ = ["RUNTIME_ERROR", "USAGE_ERROR", "BackendKind", "CliError", "build_backend", "fail"]

USAGE_ERROR = 2
"""Exit code for bad options or bad input (the user must change the command or the file)."""

RUNTIME_ERROR = 1
"""Exit code for failures while running (unreachable endpoint, model that cannot load)."""


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
