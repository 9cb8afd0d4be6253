"""docs/scale-out.md: every ``bpo-train`` command in it (and the ``sft`` behind ``accelerate
launch -m bpo_trainer.cli``) is one the real parser accepts, with the values it says."""

from __future__ import annotations

import re
import shlex
from importlib.util import find_spec
from itertools import pairwise
from pathlib import Path

import pytest

pytest.importorskip("trl")

from bpo_trainer import configs_dir
from bpo_trainer.cli import STAGES, main, parse_stage_args
from bpo_trainer.sft import resolve_deepspeed

DOC = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
SHELL_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def shell_commands() -> list[list[str]]:
    """The doc's shell commands, continuation lines joined, comments dropped, split as sh would."""
    commands = []
    for block in SHELL_BLOCK.findall(DOC.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def bpo_train_commands() -> list[list[str]]:
    """The argv of each ``bpo-train`` run: direct, or after ``-m bpo_trainer.cli``."""
    found = []
    for words in shell_commands():
        if words[0] == "bpo-train":
            found.append(words[1:])
        elif "bpo_trainer.cli" in words:
            found.append(words[words.index("bpo_trainer.cli") + 1 :])
    return found


def test_the_doc_walks_every_stage_of_the_example() -> None:
    stages = [argv[0] for argv in bpo_train_commands()]
    assert {"sft", "export", "eval", "infer"} <= set(stages)
    engines = {(a[0], a[a.index("--engine") + 1]) for a in bpo_train_commands() if "--engine" in a}
    assert {("eval", "vllm"), ("infer", "ray"), ("eval", "ray"), ("infer", "vllm")} <= engines


def without_deepspeed(argv: list[str]) -> list[str]:
    """``argv`` less its ``--deepspeed NAME`` where DeepSpeed is not installed (transformers then
    refuses the flag); the name must still be a shipped config."""
    if "--deepspeed" not in argv or find_spec("deepspeed") is not None:
        return argv
    at = argv.index("--deepspeed")
    assert Path(resolve_deepspeed(argv[at + 1])).is_file()
    return argv[:at] + argv[at + 2 :]


@pytest.mark.parametrize("argv", bpo_train_commands(), ids=lambda argv: " ".join(argv[:3]))
def test_each_bpo_train_command_parses(argv: list[str]) -> None:
    argv = without_deepspeed(argv)
    config = parse_stage_args(STAGES[argv[0]], argv[1:])
    for flag, value in pairwise(argv[1:]):
        if flag.startswith("--") and not value.startswith("--"):
            field = flag[2:]
            parsed = getattr(config, field)
            if field == "deepspeed":
                assert parsed == str(configs_dir() / f"{value}.json")
            elif isinstance(parsed, list):
                assert value in parsed
            elif isinstance(parsed, int | float) and not isinstance(parsed, bool):
                assert parsed == type(parsed)(value), (field, parsed, value)
            else:
                assert str(parsed) == value, (field, parsed, value)


def test_the_accelerate_launch_uses_the_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    launches = [words for words in shell_commands() if words[:2] == ["accelerate", "launch"]]
    assert len(launches) == 1
    config_file = launches[0][launches[0].index("--config_file") + 1]
    assert config_file == "$(bpo-train --configs-dir)/accelerate.yaml"
    assert main(["--configs-dir"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert (printed / "accelerate.yaml").is_file() and (printed / "zero3.json").is_file()


def test_the_python_example_compiles() -> None:
    (code,) = PYTHON_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    compile(code, str(DOC), "exec")
    assert 'OpenAIBackend("bpo", base_url="http://127.0.0.1:8001/v1")' in code
