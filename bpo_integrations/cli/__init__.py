"""The ``bpo`` command line: ``bpo optimize``, ``bpo serve``, ``bpo check``, ``bpo proxy``."""

from __future__ import annotations

import warnings

import typer

# Libraries' deprecation notices are for developers, not for people running the command.
warnings.filterwarnings("ignore", category=FutureWarning)

app = typer.Typer(
    name="bpo",
    help="Black-Box Prompt Optimization: rewrite prompts so that LLMs answer them better.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    from bpo_integrations.cli import optimize, proxy, serve  # noqa: F401 - each registers its commands


_register()
