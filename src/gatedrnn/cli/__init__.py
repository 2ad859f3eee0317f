"""The `gatedrnn` command line: a thin layer that parses arguments and calls library functions.

Each sub-command lives in its own module `gatedrnn.cli.<name>` with two functions:
    add_arguments(parser: argparse.ArgumentParser) -> None   (cheap: no heavy imports)
    run(args: argparse.Namespace) -> int                       (the work; returns the exit code)
"""
from __future__ import annotations

import argparse
import importlib
import sys
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
}


class CLIError(Exception):
    """A user mistake: printed as one line `gatedrnn: error: ...`, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatedrnn", description="LSTM and GRU for PyTorch, with every gate visible.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"gatedrnn.cli.{module_name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except CLIError as error:
        print(f"gatedrnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gatedrnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
