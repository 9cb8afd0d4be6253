"""``bpo-train STAGE [--field value ...] [--config file.yaml]``: every stage from one command.

The options of a stage are the fields of its config dataclass, turned into flags by transformers'
``HfArgumentParser`` (TRL style). ``--config`` reads a YAML (or JSON) file of ``field: value``;
flags on the command line override it. Stages are imported only when run, so one whose module or
dependencies fail to import does not break the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from bpo_trainer import __version__, configs_dir
from bpo_trainer.errors import StageFailedError, TrainerConfigError

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


def build_parser(stage: Stage) -> Any:
    """The ``HfArgumentParser`` of ``stage``, with ``--config`` added."""
    from transformers import HfArgumentParser

    config_class, _ = stage.load()
    parser = HfArgumentParser(
        config_class,
        prog=f"{PROG} {stage.name}",
        description=stage.summary,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML or JSON file of field: value pairs; command-line flags override it.",
    )
    return parser


def parse_stage_args(stage: Stage, argv: Sequence[str]) -> Any:
    """The config object of ``stage`` from ``argv`` (and the ``--config`` file it names)."""
    parser = build_parser(stage)
    config_file = _config_file(argv)
    if config_file is not None:
        _apply_config_file(parser, stage, config_file)
    parsed = parser.parse_args_into_dataclasses(args=list(argv), look_for_args_file=False)
    return parsed[0]


def _config_file(argv: Sequence[str]) -> Path | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    return None if known.config is None else Path(known.config)


def _apply_config_file(parser: Any, stage: Stage, path: Path) -> None:
    import yaml

    if not path.is_file():
        raise TrainerConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise TrainerConfigError(f"{path}: not valid YAML ({error})") from error
    data = data or {}
    if not isinstance(data, dict):
        raise TrainerConfigError(f"{path}: expected a mapping of field: value pairs")
    config_class, _ = stage.load()
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, fields, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise TrainerConfigError(
            f"{path}: unknown field(s) for stage {stage.name!r}: {', '.join(hints)}; "
            f"see `{PROG} {stage.name} --help`"
        )
    for action in parser._actions:
        if action.dest in values:
            # A value from the file satisfies a required flag; argparse converts string defaults
            # with the flag's type, so YAML scalars go through the same checks as typed flags.
            action.required = False
    parser.set_defaults(**values)


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
