"""`gatedrnn predict CHECKPOINT`: run a trained model on your inputs (a .npy/.csv/.pt file) or on
examples from its task's split, and print or save the predictions (classes for classifiers)."""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory (uses best/), a checkpoint directory, or a file inside one")
    parser.add_argument("--input", metavar="FILE",
                        help="inputs: .npy or .pt array of shape (T, I) or (B, T, I), or a .csv with one row "
                             "per time step and one column per feature (default: use --split examples)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="without --input: predict these task examples and show their targets (default: test)")
    parser.add_argument("--limit", type=int, default=10, help="without --input: how many examples (default: 10)")
    parser.add_argument("--output", metavar="FILE.csv",
                        help="also write the predictions to this CSV file (never inside a checkpoint folder)")
    parser.add_argument("--force", action="store_true", help="let --output replace an existing file")


def read_inputs(path: Path, *, token_ids: bool = False):
    """A (B, T, I) float tensor from a .npy, .pt or .csv file; with `token_ids` (language models), a
    (B, T) integer tensor of token ids stays as it is."""
    import numpy as np
    import torch

    if not path.is_file():
        raise CLIError(f"input file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".pt":
            array = torch.load(path, weights_only=True)
        elif suffix == ".csv":
            array = torch.from_numpy(np.loadtxt(path, delimiter=",", ndmin=2))
        else:
            raise CLIError(f"input file {str(path)!r} should be .npy, .pt or .csv, got {suffix!r}")
    except CLIError:
        raise
    except Exception as error:
        raise CLIError(f"cannot read input file {str(path)!r}: {error}".replace("\n", " ")) from None
    if not isinstance(array, torch.Tensor) or array.dim() not in (2, 3):
        shape = tuple(array.shape) if isinstance(array, torch.Tensor) else type(array).__name__
        raise CLIError(f"input file {str(path)!r} should hold an array of shape (T, I) or (B, T, I), got {shape}")
    if array.is_complex() or array.dtype == torch.bool:
        raise CLIError(f"input file {str(path)!r} should hold real numbers, got dtype {array.dtype}")
    array = array if array.dim() == 3 else array.unsqueeze(0)  # (B, T, I)
    if token_ids:
        if array.is_floating_point():
            raise CLIError(f"input file {str(path)!r} should hold integer token ids for a language model, "
                           f"got dtype {array.dtype}")
        return array.long()
    return array.float()  # integers too: a (T, I) array of counts is a valid input to a regressor


def check_output(output: Path, *, force: bool) -> None:
    """--output never lands in a checkpoint folder, and replaces another file only with --force."""
    from gatedrnn.train.checkpoint import META_FILE, STATE_FILE, WEIGHTS_FILE

    parent = output.resolve().parent
    if not parent.is_dir():
        raise CLIError(f"--output directory {str(parent)!r} does not exist")
    if any((parent / name).exists() for name in (META_FILE, WEIGHTS_FILE, STATE_FILE)):
        raise CLIError(f"--output {str(output)!r} is inside the checkpoint folder {str(parent)!r}; "
                       f"write the predictions somewhere else")
    if output.is_dir():
        raise CLIError(f"--output {str(output)!r} is a directory")
    if output.exists() and not force:
        raise CLIError(f"--output {str(output)!r} exists; pass --force to replace it")


def describe(prediction, kind: str) -> str:
    if kind == "classification":
        return str(int(prediction.argmax(-1)))
    if kind == "language_model":
        return str(prediction.argmax(-1).tolist())
    values = prediction.flatten().tolist()
    return " ".join(f"{v:.6g}" for v in values)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CLIError(f"--limit should be an integer >= 1, got {args.limit}")
    if args.output:
        check_output(Path(args.output), force=args.force)
    import torch

    from gatedrnn.cli.evaluate import load_checkpoint_or_fail, task_split
    from gatedrnn.train.evaluation import forward

    model, config, task = load_checkpoint_or_fail(args.checkpoint)
    kind = task.info.kind
    rows = []
    with torch.no_grad():
        if args.input:
            inputs = read_inputs(Path(args.input), token_ids=kind == "language_model")
            try:
                predictions = forward(model, inputs)
            except (ValueError, RuntimeError, TypeError) as error:
                raise CLIError(f"the model cannot read {args.input!r}: {error}".replace("\n", " ")) from None
            rows = [(index, describe(p, kind), "") for index, p in enumerate(predictions)]
        else:
            dataset = task_split(task, config.seed, args.split)
            items = [dataset[i] for i in range(min(args.limit, len(dataset)))]
            inputs, targets = task.collate(items)
            predictions = forward(model, inputs)
            rows = [(index, describe(p, kind), describe(t, "regression") if kind != "classification" else str(int(t)))
                    for index, (p, t) in enumerate(zip(predictions, targets))]
    print(f"{config.task} {config.cell}: {'prediction' if kind != 'classification' else 'class'} per example")
    for index, prediction, target in rows:
        print(f"  {index:>4}  {prediction}" + (f"   (target {target})" if target != "" else ""))
    if args.output:
        try:
            with open(args.output, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["index", "prediction", "target"])
                writer.writerows(rows)
        except OSError as error:
            raise CLIError(f"cannot write {args.output!r}: {error.strerror}") from None
    return 0
