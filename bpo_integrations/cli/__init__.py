"""The ``bpo`` command line: ``bpo optimize``, ``bpo serve``, ``bpo check``, ``bpo proxy``."""

from __future__ import annotations

import logging
import os
import warnings

import typer

app = typer.Typer(
    name="bpo",
    help="Black-Box Prompt Optimization: rewrite prompts so that LLMs answer them better.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _quiet_dependencies(ctx: typer.Context) -> None:
    # Dependencies' warnings (deprecations, generation-config notes) are for developers, not for
    # people running a command, and a line written under a progress bar breaks it. transformers
    # logs through a handler of its own, set up from this variable when it is imported.
    warnings.filterwarnings("ignore", module=r"(?!bpo_integrations\b)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if ctx.invoked_subcommand == "optimize":
        # It reports each fallback itself: a note, the output record, the exit status. Only while
        # it runs, so a program that runs the command in-process keeps its own logging.
        logger = logging.getLogger("bpo_integrations")
        ctx.call_on_close(lambda level=logger.level: logger.setLevel(level))
        logger.setLevel(logging.ERROR)


def _register() -> None:
    from bpo_integrations.cli import check, optimize, proxy, serve  # noqa: F401 - each registers one


_register()
