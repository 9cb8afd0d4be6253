"""``bpo-train STAGE [--field value ...] [--config file.yaml]``: every stage from one command.

The options of a stage are the fields of its config dataclass, turned into flags by TRL's
``TrlParser`` (transformers' ``HfArgumentParser`` with ``--config``): ``--config`` reads a YAML
file of ``field: value`` pairs, and flags on the command line override it. Stages are imported
only when run, so one whose module or dependencies fail to import does not break the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo_trainer import __version__, configs_dir
from bpo_trainer.errors import StageFailedError, TrainerConfigError

if TYPE_CHECKING:
    from trl import TrlParser

PROG = "bpo-train"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``module.config_class`` configures ``module.run_function``."""

    name: str
    module: str
    config_class: str
    run_function: str
    summary: str

    def load(self) -> tuple[type[Any], Any]:
        """The config class and run function; a clear error when the module cannot be imported."""
        try:
            module = import_module(self.module)
        except ImportError as error:
            raise StageUnavailableError(
                f"stage {self.name!r} is unavailable: importing {self.module} failed "
                f"({type(error).__name__}: {error}). Install what it needs "
                "(pip install -e 'trainer') or pick another stage"
            ) from error
        try:
            return getattr(module, self.config_class), getattr(module, self.run_function)
        except AttributeError as error:
            raise StageUnavailableError(
                f"stage {self.name!r} is unavailable: {self.module} lacks "
                f"{self.config_class} or {self.run_function}"
            ) from error


class StageUnavailableError(RuntimeError):
    """A stage's module could not be imported or does not follow the stage contract."""


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "collect",
            "bpo_trainer.collect",
            "CollectConfig",
            "run_collect",
            "Gather pairwise feedback data (a preferred and a dispreferred response).",
        ),
        Stage(
            "construct",
            "bpo_trainer.construct",
            "ConstructConfig",
            "run_construct",
            "Have an LLM write an optimized prompt from each feedback pair.",
        ),
        Stage(
            "process",
            "bpo_trainer.process",
            "ProcessConfig",
            "run_process",
            "Filter the pairs into (final_input, final_output) training data.",
        ),
        Stage(
            "sft",
            "bpo_trainer.sft",
            "SFTConfig",
            "run_sft",
            "Fine-tune a causal LM into a prompt optimizer (TRL SFT, full or LoRA).",
        ),
        Stage(
            "infer",
            "bpo_trainer.infer",
            "InferConfig",
            "run_infer",
            "Optimize every prompt of a data set with any backend (resumable JSONL).",
        ),
        Stage(
            "export",
            "bpo_trainer.export",
            "ExportConfig",
            "run_export",
            "Merge a LoRA adapter, save a TGI-loadable folder with a model card.",
        ),
        Stage(
            "eval",
            "bpo_trainer.evaluate",
            "EvalConfig",
            "run_eval",
            "Judge answers to optimized vs original prompts (the paper's win rates, ΔWR).",
        ),
        Stage(
            "drpo",
            "bpo_trainer.drpo",
            "DRPOConfig",
            "run_drpo",
            "Search a system prompt and in-context examples that align a model (DRPO).",
        ),
        Stage(
            "drpo-eval",
            "bpo_trainer.drpo",
            "DRPOEvalConfig",
            "run_drpo_eval",
            "Score answers with and without a DRPO alignment (just-eval's 1-5 aspects).",
        ),
    )
}
"""The registry, in pipeline order."""


def _top_level_help() -> str:
    width = max(len(name) for name in STAGES)
    lines = [
        f"usage: {PROG} STAGE [--field value ...] [--config file.yaml]",
        "",
        "Reproduce the BPO prompt optimizer, one stage at a time.",
        "",
        "stages:",
        *(f"  {stage.name:<{width}}  {stage.summary}" for stage in STAGES.values()),
        "",
        "options:",
        "  -h, --help     show this help; `bpo-train STAGE --help` lists a stage's fields",
        "  --version      show the version",
        "  --configs-dir  print the folder of the shipped DeepSpeed and accelerate configs",
    ]
    return "\n".join(lines) + "\n"


def build_parser(stage: Stage) -> TrlParser:
    """The ``TrlParser`` of ``stage``: a flag per config field, and ``--config`` (a YAML file whose
    ``field: value`` pairs replace the defaults; TRL reads it, flags override it)."""
    from trl import TrlParser

    config_class, _ = stage.load()
    parser = TrlParser(config_class, prog=f"{PROG} {stage.name}", description=stage.summary)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML file of field: value pairs (and an optional env: mapping of environment "
        "variables); command-line flags override it.",
    )
    return parser


def parse_stage_args(stage: Stage, argv: Sequence[str]) -> Any:
    """The config object of ``stage`` from ``argv`` (and the ``--config`` file it names)."""
    import yaml

    parser = build_parser(stage)
    args = _split_config_flag(argv)
    try:
        parsed = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except yaml.YAMLError as error:
        raise TrainerConfigError(f"{_config_path(args)}: not valid YAML ({error})") from error
    config, from_file, from_flags = parsed[0], parsed[-2], parsed[-1]
    if from_file:
        raise TrainerConfigError(
            f"{_config_path(args)}: unknown field(s) for stage {stage.name!r}: "
            f"{_with_hints(from_file[::2], stage)}; see `{PROG} {stage.name} --help`"
        )
    if from_flags:
        options = [arg for arg in from_flags if arg.startswith("-")] or from_flags
        raise TrainerConfigError(
            f"unknown option(s) for stage {stage.name!r}: {_with_hints(options, stage)}; "
            f"see `{PROG} {stage.name} --help`"
        )
    return config


def _split_config_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--config=FILE`` written ``--config FILE`` (the form TRL looks for); a
    missing file is named here."""
    args: list[str] = []
    for arg in argv:
        args += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    path = _config_path(args)
    if path is not None and not path.is_file():
        raise TrainerConfigError(f"config file not found: {path}")
    return args


def _config_path(args: Sequence[str]) -> Path | None:
    if "--config" not in args:
        return None
    index = args.index("--config") + 1
    if index >= len(args):
        raise TrainerConfigError("--config needs a file: --config FILE.yaml")
    return Path(args[index])


def _with_hints(options: Sequence[str], stage: Stage) -> str:
    """``options`` (``--name`` or ``name``), each with the closest field name of ``stage``."""
    config_class, _ = stage.load()
    fields = [f.name for f in dataclasses.fields(config_class) if f.init]
    named = []
    for option in options:
        key = option.lstrip("-").split("=", 1)[0]
        close = difflib.get_close_matches(key.replace("-", "_"), fields, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return ", ".join(named)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bpo-train``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_top_level_help())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    if args[0] == "--configs-dir":
        print(configs_dir())
        return 0
    name, rest = args[0], args[1:]
    stage = STAGES.get(name)
    if stage is None:
        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        sys.stderr.write(
            f"{PROG}: unknown stage {name!r}{hint}; choose one of: {', '.join(STAGES)}\n"
        )
        return 2
    try:
        try:
            config = parse_stage_args(stage, rest)
        except ValueError as error:  # a config's own validation (__post_init__)
            raise TrainerConfigError(str(error)) from error
        _, run = stage.load()
        result = run(config)
    except (TrainerConfigError, StageUnavailableError, FileNotFoundError) as error:
        sys.stderr.write(f"{PROG} {name}: error: {error}\n")
        return 2
    except StageFailedError as error:
        sys.stderr.write(f"{PROG} {name}: stopped: {error}\n")
        return 1
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
