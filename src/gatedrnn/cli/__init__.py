"""The `gatedrnn` command line: a thin layer that parses arguments and calls library functions.

Each sub-command lives in its own module `gatedrnn.cli.<name>` with two functions:
    add_arguments(parser: argparse.ArgumentParser) -> None   (cheap: no heavy imports)
    run(args: argparse.Namespace) -> int                       (the work; returns the exit code)

Every error reaches the user as one line `gatedrnn: error: ...` with exit code 2: a `CLIError` (a user
mistake the command recognised), an `OSError` (a full disk, a permission) or anything else that escapes a
command. `--debug` (before or after the command's name) prints the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Optional, Sequence

# name -> one-line help; the module gatedrnn.cli.<module> implements it.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the showcase: RNN vs LSTM vs GRU on the adding problem, then the explain report"),
    "tasks": ("tasks", "list the tasks with their descriptions, metrics and baselines"),
    "train": ("train", "train a model on a task; checkpoints, logs, --resume"),
    "evaluate": ("evaluate", "evaluate a checkpoint on a task's test split"),
    "predict": ("predict", "run a checkpoint on inputs (forecast, classify)"),
    "generate": ("generate", "sample text from a character-level language model checkpoint"),
    "export": ("export", "write a checkpoint's model as ONNX and check it in onnxruntime against PyTorch"),
    "explain": ("explain", "write the HTML report that shows a model's gates and gradient flow"),
    "bench": ("bench", "benchmark gatedrnn against torch.nn and onnxruntime; writes benchmarks/results/*.json"),
    "build": ("build", "compile the fused C++ engine now (once per machine), e.g. while building a Docker image"),
}


class CLIError(Exception):
    """A user mistake: printed as one line `gatedrnn: error: ...`, exit code 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors (an unknown flag, a value of the wrong type) as one line too."""

    def error(self, message: str):
        self.exit(2, f"gatedrnn: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatedrnn", description="LSTM and GRU for PyTorch, with every gate visible.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"gatedrnn.cli.{module_name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="print the traceback of an error")
        command_parser.set_defaults(_module=module)
    return parser


def _one_line(error: BaseException) -> str:
    """An exception as one line: OSErrors as 'what: path', others as their message (else their type)."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename!r}" if error.filename else ""
        return f"{error.strerror}{where}"
    text = " ".join(str(error).split())
    return text if isinstance(error, CLIError) else f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_environment() -> None:
    if os.environ.get("GATEDRNN_BACKEND"):  # only then: the check imports torch
        from gatedrnn.engine._build import BackendSettingError, requested_backend

        try:
            requested_backend()
        except BackendSettingError as error:
            raise CLIError(str(error)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_environment()
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("gatedrnn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # CLIError, a full disk, or a bug: one line unless --debug
        if args.debug:
            traceback.print_exc()
        hint = "" if isinstance(error, (CLIError, OSError)) or args.debug else " (run with --debug for the traceback)"
        print(f"gatedrnn: error: {_one_line(error)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
