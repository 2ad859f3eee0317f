"""`gatedrnn evaluate CHECKPOINT`: a trained model's metrics on one of its task's splits."""
from __future__ import annotations

import argparse
import json

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory (uses best/, else last/), a checkpoint directory, "
                                           "or a file inside one")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="which split to evaluate (default: test)")
    parser.add_argument("--last", action="store_true", help="in a run directory, use last/ instead of best/")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=256,
                        help="evaluation batch size (default: 256)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def load_checkpoint_or_fail(path: str, *, prefer: str = "best"):
    """load_model with CheckpointError / bad task options turned into one-line CLI errors."""
    from gatedrnn.data import DataUnavailableError
    from gatedrnn.train.checkpoint import CheckpointError, load_model

    try:
        return load_model(path, prefer=prefer)
    except (CheckpointError, DataUnavailableError, FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None


def task_split(task, seed: int, split: str):
    """One split of a task's data, with a missing or damaged data package as a one-line error."""
    from gatedrnn.data import CorruptDataError, DataUnavailableError

    try:
        return task.splits(seed)[split]
    except (DataUnavailableError, CorruptDataError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CLIError(f"--batch-size should be an integer >= 1, got {args.batch_size}")
    from gatedrnn.train import evaluate_split

    model, config, task = load_checkpoint_or_fail(args.checkpoint, prefer="last" if args.last else "best")
    dataset = task_split(task, config.seed, args.split)
    metrics = evaluate_split(model, task, dataset, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"task": config.task, "cell": config.cell, "split": args.split, "metrics": metrics}))
    else:
        print(f"{config.task} {config.cell} on {args.split} ({len(dataset)} examples):")
        for name, value in metrics.items():
            print(f"  {name:>14} {value:.6g}")
    return 0
