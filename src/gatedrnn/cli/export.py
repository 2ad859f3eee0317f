"""`gatedrnn export RUN_DIR model.onnx`: a trained model as ONNX (dynamic batch and time axes), checked in
onnxruntime against PyTorch on examples of its task; exit 2 if they differ by more than --tolerance."""
from __future__ import annotations

import argparse
from pathlib import Path

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory (uses best/), a checkpoint directory, or a file inside one")
    parser.add_argument("output", help="the ONNX file to write (its directory must exist)")
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="the task split whose examples check the export (default: test)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest |onnxruntime - PyTorch| accepted (default: 1e-4)")


def sample_inputs(task, seed: int, split: str, *, limit: int = 8):
    """Model inputs from the task's split that exercise both dynamic axes: a batch of up to `limit` examples,
    one example alone (another batch size) and the batch cut to half its steps (another length; the models
    are batch_first, time is dim 1). A task that packs variable-length examples gives two examples, each
    unpadded (their lengths differ where the data's do)."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    from gatedrnn.cli.evaluate import task_split

    dataset = task_split(task, seed, split)
    if len(dataset) == 0:
        raise CLIError(f"the {split} split of task {task.info.name!r} is empty: choose another --split")
    items = [dataset[i] for i in range(min(limit, len(dataset)))]
    batch, _ = task.collate(items)
    if isinstance(batch, PackedSequence):  # one example at a time: no padding enters the recurrent layer
        singles = [pad_packed_sequence(task.collate([item])[0], batch_first=True)[0] for item in items[:2]]
        return singles
    if not isinstance(batch, torch.Tensor):
        raise CLIError(f"task {task.info.name!r} feeds its model a {type(batch).__name__}, which ONNX export "
                       f"cannot take; export needs a tensor input")
    return [batch, batch[:1], batch[:, : max(1, batch.shape[1] // 2)]]


def run(args: argparse.Namespace) -> int:
    if not args.tolerance >= 0:
        raise CLIError(f"--tolerance should be a number >= 0, got {args.tolerance}")
    output = Path(args.output)
    if output.exists() and not args.force:
        raise CLIError(f"{str(output)!r} exists; pass --force to overwrite it")
    if output.exists() and not output.is_file():
        raise CLIError(f"{str(output)!r} is not a file")
    if not output.resolve().parent.is_dir():
        raise CLIError(f"output directory {str(output.resolve().parent)!r} does not exist")

    from gatedrnn.cli.evaluate import load_checkpoint_or_fail
    from gatedrnn.export import onnx_max_abs_diff, onnx_op_types, to_onnx
    from gatedrnn.train.checkpoint import atomic_write_bytes

    model, config, task = load_checkpoint_or_fail(args.checkpoint)
    inputs = sample_inputs(task, config.seed, args.split)
    try:
        onnx_model = to_onnx(model, inputs[0])
    except RuntimeError as error:  # e.g. an LSTM with proj_size, which ONNX cannot express
        raise CLIError(f"cannot export {args.checkpoint!r}: {error}".replace("\n", " ")) from None
    difference = onnx_max_abs_diff(onnx_model, model, inputs)
    recurrent = [op for op in onnx_op_types(onnx_model) if op in ("LSTM", "GRU", "RNN")]
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    if not difference <= args.tolerance:
        raise CLIError(f"onnxruntime differs from PyTorch by {difference:.3g} on {shapes} "
                       f"(> --tolerance {args.tolerance:g}); nothing written")
    try:
        atomic_write_bytes(output, onnx_model)
    except OSError as error:
        raise CLIError(f"cannot write {str(output)!r}: {error.strerror}") from None
    print(f"wrote {output} ({len(onnx_model) / 1024:.1f} KiB, ONNX {'/'.join(recurrent) or 'no recurrent'} "
          f"operators, dynamic batch and time axes)")
    print(f"max abs difference onnxruntime vs PyTorch: {difference:.3g} on inputs {shapes} "
          f"(tolerance {args.tolerance:g})")
    return 0
