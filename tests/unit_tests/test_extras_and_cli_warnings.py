"""A missing extra names its pip command; the CLI keeps dependencies' warnings off the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Without what an in-process CLI test may have set in this process's environment.
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("blocked", "module", "command"),
    [
        (
            "langchain_core",
            "bpo_integrations.langchain",
            "pip install 'bpo-integrations[langchain]'",
        ),
        (
            "llama_index",
            "bpo_integrations.llama_index",
            "pip install 'bpo-integrations[llamaindex]'",
        ),
        ("langchain_core", "bpo_integrations.backends.langchain", "[langchain]'"),
        ("llama_index", "bpo_integrations.backends.llama_index", "[llamaindex]'"),
    ],
)
def test_an_integration_without_its_framework_names_the_pip_command(
    blocked: str, module: str, command: str
) -> None:
    done = run(
        f"""
        import importlib, sys
        sys.modules[{blocked!r}] = None  # as if the framework were not installed
        try:
            importlib.import_module({module!r})
        except ImportError as error:
            print(type(error).__name__, error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ImportError "), done.stdout
    assert command in done.stdout


def test_the_cli_filters_dependencies_warnings_but_not_ours() -> None:
    done = run(
        """
        import os, warnings
        from typer.testing import CliRunner
        from bpo_integrations.cli import app

        assert CliRunner().invoke(app, ["optimize", "--help"]).exit_code == 0
        for module, category in [
            ("transformers.generation.utils", UserWarning),
            ("torch.nn.modules", FutureWarning),
            ("huggingface_hub.utils", DeprecationWarning),
            ("bpo_integrations.backends.local", UserWarning),
        ]:
            warnings.warn_explicit(f"from {module}", category, "x.py", 1, module=module)
        print(os.environ.get("TRANSFORMERS_VERBOSITY"))
        """
    )
    assert done.returncode == 0, done.stderr
    assert "from bpo_integrations.backends.local" in done.stderr
    for module in ("transformers", "torch", "huggingface_hub"):
        assert f"from {module}" not in done.stderr
    assert done.stdout.split() == ["error"]  # transformers' own log lines too


def test_importing_the_cli_changes_nothing_until_a_command_runs() -> None:
    done = run(
        """
        import logging, os, warnings
        import bpo_integrations.cli
        warnings.warn_explicit("still shown", UserWarning, "x.py", 1, module="transformers.x")
        print(os.environ.get("TRANSFORMERS_VERBOSITY"), logging.getLogger("bpo_integrations").level)
        """
    )
    assert "still shown" in done.stderr
    assert done.stdout.split() == ["None", "0"]


def test_bpo_optimize_quiets_the_package_logger_only_while_it_runs() -> None:
    done = run(
        """
        import logging
        from typer.testing import CliRunner
        from bpo_integrations.cli import app

        logger = logging.getLogger("bpo_integrations")
        seen = []
        logger.addFilter(lambda record: seen.append(logger.level) or True)
        logger.setLevel(logging.INFO)
        result = CliRunner().invoke(app, ["optimize", "--backend", "tgi", "--url", "http://127.0.0.1:9", "hi"])
        logger.info("after the command")
        print(result.exit_code, logger.level, seen)
        """
    )
    assert done.returncode == 0, done.stderr
    _exit_code, level, seen = done.stdout.split(maxsplit=2)
    assert level == "20"  # INFO again once the command is over
    assert seen.strip() == "[20]"  # the line logged after it went through; none during it
