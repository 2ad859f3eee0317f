"""`gatedrnn explain`: the explain report (`gatedrnn.report.write_explain_report`) for saved models.

    gatedrnn explain --checkpoint out/lstm [--checkpoint out/gru …] [--out report.html]
    gatedrnn explain --demo-dir out/demo            (the demo's rnn/, lstm/, gru/ runs)

Inputs are the first --samples sequences of the task's --split, rebuilt from the checkpoint's task and seed;
the training curves come from each run directory's epochs.csv when it is there.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from gatedrnn.cli import CLIError

DEMO_ORDER = ("rnn", "lstm", "gru")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", action="append", metavar="DIR",
                        help="a checkpoint or run directory (repeat to compare several models on the same task)")
    source.add_argument("--demo-dir", dest="demo_dir", metavar="DIR",
                        help="the demo's output directory: every sub-directory holding a run is included")
    parser.add_argument("--out", metavar="FILE",
                        help="the HTML file to write (default: explain.html in the demo or first run directory)")
    parser.add_argument("--samples", type=int, default=16, help="how many sequences to trace (default: 16)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="which split the sequences come from (default: test)")
    parser.add_argument("--seed", type=int, default=None,
                        help="data seed (default: the seed the first model was trained with)")


def _run_directory(checkpoint_dir: Path) -> Path:
    """The run directory of a checkpoint directory (its parent when it is best/ or last/)."""
    return checkpoint_dir.parent if checkpoint_dir.name in ("best", "last") else checkpoint_dir


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """epochs.csv of a run as a list of {column: float}, keeping step/epoch, train_loss and the validation
    metrics (not lr, timings or the constant baseline); [] when there is none."""
    path = run_dir / "epochs.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in (rows[0] if rows else {}) if c in ("epoch", "step", "train_loss")
               or (c.startswith("val_") and "baseline" not in c)]
    if any(c.startswith("val_") and c != "val_loss" for c in columns):
        columns = [c for c in columns if c != "val_loss"]  # the task's loss repeats its headline metric
    history = []
    for row in rows:
        parsed = {}
        for key in columns:
            try:
                parsed[key] = float(row[key])
            except (TypeError, ValueError):
                continue
        history.append(parsed)
    return history


def _sources(args: argparse.Namespace) -> list[Path]:
    if args.checkpoint:
        return [Path(p) for p in args.checkpoint]
    demo = Path(args.demo_dir)
    if not demo.is_dir():
        raise CLIError(f"--demo-dir {str(demo)!r} is not a directory")
    runs = [d for d in sorted(demo.iterdir()) if d.is_dir() and ((d / "best").is_dir() or (d / "last").is_dir()
                                                                  or (d / "meta.json").is_file())]
    runs.sort(key=lambda d: (DEMO_ORDER.index(d.name) if d.name in DEMO_ORDER else len(DEMO_ORDER), d.name))
    if not runs:
        raise CLIError(f"--demo-dir {str(demo)!r} holds no runs (expected sub-directories like rnn/, lstm/, gru/ "
                       "with a best/ or last/ checkpoint; run `gatedrnn demo` first)")
    return runs


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise CLIError(f"--samples should be >= 1, got {args.samples}")
    try:
        from gatedrnn.train.checkpoint import CheckpointError, load_model, resolve_checkpoint
    except ImportError as error:  # the trainer extra is missing
        raise CLIError(f"loading checkpoints needs gatedrnn.train ({error}); install gatedrnn[train]") from None
    from gatedrnn.report import write_explain_report

    models, histories, task, seed = {}, {}, None, args.seed
    for source in _sources(args):
        try:
            directory = resolve_checkpoint(source)
            model, config, model_task = load_model(directory)
        except CheckpointError as error:
            raise CLIError(str(error)) from None
        if task is None:
            task, seed = model_task, (config.seed if seed is None else seed)
        elif (model_task.info.name, model_task.options) != (task.info.name, task.options):
            raise CLIError(f"{str(source)!r} was trained on {model_task.info.name} {model_task.options}, but the first "
                           f"model on {task.info.name} {task.options}: models in one report must share a task")
        label = config.cell.upper()
        if label in models:
            label = f"{label} ({_run_directory(directory).name})"
        models[label] = model
        histories[label] = read_history(_run_directory(directory))

    split = task.splits(seed)[args.split]
    count = min(args.samples, len(split))
    inputs, targets = task.collate([split[i] for i in range(count)])
    if args.out:
        out = Path(args.out)
    else:
        out = (Path(args.demo_dir) if args.demo_dir else _run_directory(resolve_checkpoint(args.checkpoint[0]))) \
            / "explain.html"
    notes = {"Source": f"{len(models)} model(s) from {', '.join(str(s) for s in _sources(args))}; "
                       f"{count} sequences of the {args.split} split (seed {seed})."}
    try:
        path = write_explain_report(models, inputs, targets, out, task_name=task.info.name, loss_fn=task.loss,
                                    history={k: v for k, v in histories.items() if v} or None, notes=notes)
    except ValueError as error:
        raise CLIError(str(error)) from None
    print(f"explain report: {path}")
    return 0
