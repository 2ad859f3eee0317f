"""`gatedrnn train`: flags (and an optional TOML/YAML file) -> TrainConfig -> Trainer.fit().

Precedence: TrainConfig defaults < --config file < flags. With --resume the run's saved config is the
base instead of the defaults. Under `torchrun --nproc_per_node=N -m gatedrnn train ...` the same
command trains with DistributedDataParallel over gloo; only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import ast
import json
from typing import Any, Optional

from gatedrnn.cli import CLIError

# flag -> TrainConfig field, for every field set from a plain flag (dest names equal field names)
CONFIG_FLAGS = ("task", "cell", "hidden_size", "num_layers", "dropout", "init", "forget_bias", "chrono_max",
                "zoneout", "recurrent_dropout", "weight_drop", "candidate_dropout",
                "batch_size", "epochs", "max_steps", "lr",
                "weight_decay", "clip_norm", "schedule", "warmup_steps", "step_every", "step_gamma", "patience",
                "seed", "out_dir", "checkpoint_every")


def parse_option(text: str) -> tuple[str, Any]:
    """'seq_len=100' -> ("seq_len", 100); values are Python literals (int, float, True, 'text'), else strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"task option should look like NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def optional_float(text: str) -> Optional[float]:
    """A number, or 'none'/'off' for no value (e.g. --clip-norm none)."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task and model")
    group.add_argument("--task", help="task name, see `gatedrnn tasks` (default: adding)")
    group.add_argument("-o", "--option", dest="task_option", action="append", type=parse_option, default=[],
                       metavar="NAME=VALUE", help="a task option, repeatable, e.g. -o seq_len=200 (see `gatedrnn tasks`)")
    group.add_argument("--cell", help="recurrent cell: lstm, gru, rnn, slstm or an LSTM variant (lstm_peephole, "
                                      "lstm_cifg, ...; `gatedrnn tasks` lists them) (default: lstm)")
    group.add_argument("--hidden-size", dest="hidden_size", type=int, help="hidden units per layer (default: 64)")
    group.add_argument("--num-layers", dest="num_layers", type=int, help="stacked recurrent layers (default: 1)")
    group.add_argument("--dropout", type=float, help="dropout between stacked layers, in [0, 1) (default: 0)")
    group.add_argument("--init", help="gate-bias init of an lstm or gru: default (torch's), chrono (Tallec & Ollivier "
                                      "2018) or forget-bias (Jozefowicz et al. 2015) (default: default)")
    group.add_argument("--forget-bias", dest="forget_bias", type=float,
                       help="--init forget-bias: the forget gate's (gru: update gate z's) bias (default: 1.0)")
    group.add_argument("--chrono-max", dest="chrono_max", type=int,
                       help="--init chrono: T_max, the longest dependency to expect, an integer >= 2 "
                            "(default: the task's seq_len option)")
    group.add_argument("--zoneout", type=float, help="zoneout rate on h and c (Krueger et al. 2017), in [0, 1) "
                                                     "(default: 0)")
    group.add_argument("--recurrent-dropout", dest="recurrent_dropout", type=float,
                       help="variational dropout on the recurrent input, one mask per sequence (Gal & Ghahramani "
                            "2016), in [0, 1) (default: 0)")
    group.add_argument("--weight-drop", dest="weight_drop", type=float,
                       help="DropConnect on W_hh, one mask per forward (AWD-LSTM), in [0, 1) (default: 0)")
    group.add_argument("--candidate-dropout", dest="candidate_dropout", type=float,
                       help="dropout on the candidate (lstm g, gru n) per step (Semeniuta et al. 2016), in [0, 1) "
                            "(default: 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML or YAML file of settings (the long option names with _ for -; task options "
                             "in a [task_options] table); flags given on the command line win")
    add_model_arguments(parser)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", dest="batch_size", type=int,
                     help="global batch size, split evenly over torchrun processes (default: 32)")
    opt.add_argument("--epochs", type=int, help="passes over the training set (default: 10)")
    opt.add_argument("--max-steps", dest="max_steps", type=int, help="stop after this many optimizer steps (default: no limit)")
    opt.add_argument("--lr", type=float, help="AdamW learning rate (default: 1e-3)")
    opt.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default: 0.01)")
    opt.add_argument("--clip-norm", dest="clip_norm", type=optional_float,
                     help="clip the gradient's global norm to this, or 'none' (default: 1.0)")
    opt.add_argument("--schedule", help="learning-rate schedule: cosine, step or none (default: cosine)")
    opt.add_argument("--warmup-steps", dest="warmup_steps", type=int, help="linear warm-up steps (default: 0)")
    opt.add_argument("--step-every", dest="step_every", type=int,
                     help="'step' schedule: decay the lr every this many steps (default: 1000)")
    opt.add_argument("--step-gamma", dest="step_gamma", type=float, help="'step' schedule: decay factor (default: 0.5)")
    opt.add_argument("--patience", type=int,
                     help="early stopping: stop after this many epochs without a better validation metric "
                          "(default: off)")
    opt.add_argument("--seed", type=int, help="seed for data, initialisation, shuffling and dropout (default: 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--out-dir", dest="out_dir",
                     help="run directory: last/ and best/ checkpoints, steps.csv, epochs.csv, tensorboard/, "
                          "results.json (default: runs/<task>-<cell>)")
    out.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                     help="also save last/ every N optimizer steps, for resuming mid-epoch (default: 0, epoch ends only)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in --out-dir from its last/ checkpoint, bit-exactly")
    out.add_argument("--overwrite", action="store_true", help="start a new run even if --out-dir holds one")
    out.add_argument("--no-tensorboard", dest="no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    out.add_argument("--quiet", action="store_true", help="no progress bar and no summary, only errors")
    out.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")


def task_train_defaults(task: Any) -> dict[str, Any]:
    """The task's own defaults for the TrainConfig fields (`Task.train_defaults`), below a file and flags."""
    from gatedrnn.tasks import TASKS

    task_class = TASKS.get(task) if isinstance(task, str) else None
    return dict(getattr(task_class, "train_defaults", {}))


def build_config(args: argparse.Namespace):
    """The TrainConfig for these arguments (defaults < the task's train_defaults < file < flags; the saved
    run's config when resuming)."""
    from pathlib import Path

    from gatedrnn.train import ConfigError, TrainConfig, load_config_file, merge_config, validate
    from gatedrnn.train.checkpoint import CheckpointError, read_meta, recover_dir

    try:
        file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
        flags = {name: getattr(args, name, None) for name in CONFIG_FLAGS}
        options = dict(args.task_option or [])
        if options:
            flags["task_options"] = options
        if getattr(args, "no_tensorboard", False):
            flags["tensorboard"] = False
        if getattr(args, "quiet", False):
            flags["progress"] = False
        config = merge_config(TrainConfig(), task_train_defaults(flags.get("task") or file_values.get("task")))
        config = merge_config(config, file_values)
        config = merge_config(config, flags)
        if not (flags.get("out_dir") or file_values.get("out_dir")):
            config = merge_config(config, {"out_dir": f"runs/{config.task}-{config.cell}"})
        if getattr(args, "resume", False):
            last = recover_dir(Path(config.out_dir) / "last")
            if not last.exists():
                raise CLIError(f"cannot resume: no checkpoint at {str(Path(config.out_dir) / 'last')!r}")
            saved = TrainConfig.from_dict(read_meta(last)["config"])
            config = merge_config(merge_config(saved, file_values), flags)
            config = merge_config(config, {"out_dir": str(config.out_dir)})
        return validate(config)
    except (ConfigError, CheckpointError) as error:
        raise CLIError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads should be an integer >= 1, got {args.threads}")
    config = build_config(args)
    import torch

    from gatedrnn.train import ConfigError, Trainer, TrainingError
    from gatedrnn.train.checkpoint import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    from gatedrnn.data import CorruptDataError, DataUnavailableError

    try:
        trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, DataUnavailableError, CorruptDataError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None
    finished = False
    try:
        result = trainer.fit()
        finished = True
    except (CheckpointError, TrainingError) as error:  # a full disk, a loss that became NaN
        raise CLIError(str(error)) from None
    finally:
        if not finished:  # fit left the process group itself when it finished (Trainer.leave_group)
            trainer.leave_group(together=False)
    if not args.quiet and trainer.rank == 0:
        metric = result.task.info.metric
        print(f"{config.task} {config.cell}: best epoch {result.best_epoch}, val {metric} "
              f"{result.val.get(metric, float('nan')):.4g}, test {metric} {result.test.get(metric, float('nan')):.4g}"
              f"{' (stopped early)' if result.stopped_early else ''}; {result.steps} steps in {result.seconds:.1f}s")
        print(f"test metrics: {json.dumps({k: round(v, 6) for k, v in result.test.items()})}")
        print(f"run directory: {result.out_dir} (best/, last/, steps.csv, epochs.csv, results.json)")
    return 0
